# make install (issue 13): the same set of files as the Debian packages
# (debian/, make deb), for systems without them.
#   make install                         PREFIX=/usr/local, configuration in /etc
#   make install PREFIX=/usr DESTDIR=/tmp/root
# Programs in $(SBINDIR) (ferry-imapcheck in $(BINDIR), with a link beside
# ferryd, which runs it from its own directory), man pages, the systemd
# unit, sysusers.d and tmpfiles.d entries; the Dovecot plugins in Dovecot's
# module directories (Dovecot loads them only from there). Configuration
# files are installed only when missing (an admin's edits are kept), with
# the modes of docs/routing.md ("Permissions"); after a plain `make install`
# on a systemd machine: systemd-sysusers; systemd-tmpfiles --create; then
# generate the secret files (README, "Installing").
PREFIX      ?= /usr/local
BINDIR      ?= $(PREFIX)/bin
SBINDIR     ?= $(PREFIX)/sbin
DATADIR     ?= $(PREFIX)/share
MANDIR      ?= $(DATADIR)/man
SYSCONFDIR  ?= /etc
UNITDIR     ?= $(PREFIX)/lib/systemd/system
SYSUSERSDIR ?= $(PREFIX)/lib/sysusers.d
TMPFILESDIR ?= $(PREFIX)/lib/tmpfiles.d
DOVECOT_CONFDIR ?= $(SYSCONFDIR)/dovecot
# the file that turns the plugin on; 05-ferry.conf includes it with
# !include_try, so it goes away with the plugin's files
PLUGIN_ENABLE = $(DATADIR)/ferry/dovecot-plugin.conf
MAN_PAGES = man/ferryd.8 man/ferryctl.8 man/ferry-imapcheck.1 man/ferryd.conf.5 man/ferry.7

.PHONY: install install-plugin install-service

install: install-plugin install-service

# a configuration file: installed when missing, mode $(3)
define install_conf
	@if [ -e $(DESTDIR)$(2) ]; then echo "keeping $(DESTDIR)$(2)"; else \
	    install -D -m $(3) $(1) $(DESTDIR)$(2) && echo "installed $(DESTDIR)$(2)"; fi
endef

# Dovecot 2.4 (the installed Dovecot's version, as for the build): the
# settings module too, conf/ferry-2.4.conf, and 2.4's way to add a plugin
FERRY_CONF = $(if $(SETTINGS_SO),conf/ferry-2.4.conf,conf/ferry.conf)
FERRY_AUTH_CONF = $(if $(SETTINGS_SO),conf/auth-ferry-2.4.conf.ext,conf/auth-ferry.conf.ext)
FERRY_PLUGIN_LINE = $(if $(SETTINGS_SO),mail_plugins/ferry = yes,mail_plugins = $$mail_plugins ferry)
FERRY_PLUGIN_RE = $(if $(SETTINGS_SO),^mail_plugins/ferry = yes$$,^mail_plugins = \$$mail_plugins ferry$$)

install-plugin: plugin
	install -d $(DESTDIR)$(MODULEDIR)/doveadm $(DESTDIR)$(DATADIR)/ferry \
	    $(DESTDIR)$(MANDIR)/man7
	install -m 0644 $(PLUGIN_SO) $(DESTDIR)$(MODULEDIR)/
	install -m 0644 $(DOVEADM_SO) $(DESTDIR)$(MODULEDIR)/doveadm/
	$(if $(SETTINGS_SO),install -d $(DESTDIR)$(MODULEDIR)/settings && \
	    install -m 0644 $(SETTINGS_SO) $(DESTDIR)$(MODULEDIR)/settings/)
	printf '# Loads the ferry plugin (installed with it; see conf.d/05-ferry.conf)\n%s\n' \
	    '$(FERRY_PLUGIN_LINE)' > $(DESTDIR)$(PLUGIN_ENABLE)
	chmod 0644 $(DESTDIR)$(PLUGIN_ENABLE)
	@mkdir -p $(BUILD)
	sed 's|$(FERRY_PLUGIN_RE)|!include_try $(PLUGIN_ENABLE)|' \
	    $(FERRY_CONF) > $(BUILD)/05-ferry.conf
	grep -q '^!include_try $(PLUGIN_ENABLE)$$' $(BUILD)/05-ferry.conf
	$(call install_conf,$(BUILD)/05-ferry.conf,$(DOVECOT_CONFDIR)/conf.d/05-ferry.conf,0640)
	$(call install_conf,$(FERRY_AUTH_CONF),$(DOVECOT_CONFDIR)/conf.d/auth-ferry.conf.ext,0644)
	$(call install_conf,conf/dovecot-sql.conf.ext,$(DOVECOT_CONFDIR)/dovecot-ferry-sql.conf.ext,0640)
	@# the group that reads it: Dovecot's (not when staging into DESTDIR)
	@if [ -z "$(DESTDIR)" ] && getent group dovecot >/dev/null; then \
	    chgrp dovecot $(DOVECOT_CONFDIR)/conf.d/05-ferry.conf $(DOVECOT_CONFDIR)/dovecot-ferry-sql.conf.ext; fi
	install -m 0644 man/ferry.7 $(DESTDIR)$(MANDIR)/man7/

install-service: ferryd $(IMAPCHECK)
	install -d $(DESTDIR)$(SBINDIR) $(DESTDIR)$(BINDIR) $(DESTDIR)$(UNITDIR) \
	    $(DESTDIR)$(SYSUSERSDIR) $(DESTDIR)$(TMPFILESDIR) \
	    $(DESTDIR)$(MANDIR)/man1 $(DESTDIR)$(MANDIR)/man5 $(DESTDIR)$(MANDIR)/man8
	install -m 0755 $(BUILD)/ferryd $(BUILD)/ferryctl $(DESTDIR)$(SBINDIR)/
	install -m 0755 $(IMAPCHECK) $(DESTDIR)$(BINDIR)/
	ln -sf $(shell realpath -m --relative-to=$(SBINDIR) $(BINDIR))/ferry-imapcheck \
	    $(DESTDIR)$(SBINDIR)/ferry-imapcheck
	sed 's|@SBINDIR@|$(SBINDIR)|g' conf/systemd/ferryd.service.in > $(DESTDIR)$(UNITDIR)/ferryd.service
	chmod 0644 $(DESTDIR)$(UNITDIR)/ferryd.service
	install -m 0644 conf/systemd/ferryd.sysusers $(DESTDIR)$(SYSUSERSDIR)/ferryd.conf
	install -m 0644 conf/systemd/ferryd.tmpfiles $(DESTDIR)$(TMPFILESDIR)/ferryd.conf
	$(call install_conf,conf/ferryd.conf,$(SYSCONFDIR)/ferry/ferryd.conf,0644)
	$(call install_conf,conf/postfix/transport.sqlite.cf,$(SYSCONFDIR)/postfix/ferry-transport.sqlite.cf,0644)
	install -m 0644 man/ferryd.8 man/ferryctl.8 $(DESTDIR)$(MANDIR)/man8/
	install -m 0644 man/ferry-imapcheck.1 $(DESTDIR)$(MANDIR)/man1/
	install -m 0644 man/ferryd.conf.5 $(DESTDIR)$(MANDIR)/man5/
