# make deb (issue 13): the Debian packages ferry-dovecot-plugin and ferryd,
# built from this tree by dpkg-buildpackage (debian/), into $(DEB_OUT).
# lintian checks them in tests/test_packaging.py.
DEB_PACKAGES += debhelper fakeroot lintian debootstrap dpkg-dev
DEB_OUT ?= $(BUILD)/deb

.PHONY: deb
deb:
	rm -rf $(DEB_OUT) && mkdir -p $(DEB_OUT)
	git ls-files -z --cached --others --exclude-standard | tar --null -T - -cf - | tar -xf - -C $(DEB_OUT) --one-top-level=src
	cd $(DEB_OUT)/src && DEB_BUILD_OPTIONS="noddebs parallel=$(shell nproc)" dpkg-buildpackage -us -uc -b --no-sign
	@ls $(DEB_OUT)/*.deb
