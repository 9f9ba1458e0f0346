# Phased cut-over (issue 6): routing read by Dovecot (passdb/userdb sql on
# SQLite) and Postfix (sqlite transport_maps); tests/test_cutover.py runs a
# private Postfix. The code is part of ferryd (mk/ferryd.mk).
DEB_PACKAGES += dovecot-sqlite postfix postfix-sqlite sqlite3 dovecot-pgsql postfix-pgsql

# Postfix's package asks what kind of mail system to set up; answer "No
# configuration" so installing it creates no /etc/postfix/main.cf and starts
# nothing (the tests run their own instance with its own config directory).
.PHONY: cutover-debconf
deps: cutover-debconf
cutover-debconf:
	@dpkg-query -W -f='$${Status}' postfix 2>/dev/null | grep -q "install ok installed" || \
	  { [ "$$(id -u)" != 0 ] || echo "postfix postfix/main_mailer_type select No configuration" | \
	    debconf-set-selections; }
