# Sieve filters and DNS readiness (issue 18): the ManageSieve mode of
# ferryd's IMAP client (service/managesieve.c), the migration of a user's
# scripts (service/sieve.c), DNS checks with libevent (service/dns.c).
# Tests: OLD and NEW with Pigeonhole (ManageSieve, LMTP sieve), nsd as the
# authoritative DNS server on loopback.
DEB_PACKAGES += dovecot-managesieved dovecot-sieve nsd
