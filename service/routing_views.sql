-- Ferry's routing views (docs/routing.md), read by Dovecot (passdb/userdb
-- driver sql) and Postfix (transport_maps), created by both store backends
-- (store_sqlite.c, store_pgsql.c) from this one file: standard SQL only
-- (CASE, COALESCE, ||, LEFT JOIN, scalar subquery), so the very same
-- queries work on SQLite and PostgreSQL. The view names and the
-- ferry_phase values are the contract's (include/ferry-contract.h:
-- FERRY_VIEW_*, FERRY_PHASE_*; tests/unit/test_store.c checks them).
-- A backend records this file's hash and re-creates the views when it
-- changes. Statements end with ";" at the end of a line.

CREATE VIEW ferry_route AS SELECT u.name AS name, u.new_login AS login,
 u.old_login AS old_login, COALESCE(r.target, 'old') AS target,
 COALESCE(r.changed_at, 0) AS changed_at, e.host AS host, e.port AS imap_port,
 CASE WHEN e.pop3_port > 0 THEN e.pop3_port WHEN e.tls = 'imaps' THEN 995
 ELSE 110 END AS pop3_port, e.tls AS tls, e.transport AS transport,
 u.new_host AS new_host
 FROM users u JOIN endpoints e ON e.id = u.endpoint_id
 LEFT JOIN routes r ON r.user_id = u.id;

CREATE VIEW ferry_passdb AS SELECT login, old_login AS destuser, host,
 imap_port, pop3_port,
 CASE WHEN tls = 'imaps' THEN 'yes' END AS ssl,
 CASE WHEN tls = 'starttls' THEN 'yes' END AS starttls
 FROM ferry_route WHERE target = 'old';

-- The proxy in front of several NEW backends (docs/routing.md, "Several
-- NEW backends"): every user it can route, to OLD until the cut-over, then
-- to the backend that owns the mailbox (users.new_host, the host ferryd's
-- pulls run on). A cut-over user without a backend has no row.
CREATE VIEW ferry_proxy AS SELECT login, target,
 CASE WHEN target = 'new' THEN new_host ELSE host END AS host,
 CASE WHEN target = 'new' THEN login ELSE old_login END AS destuser,
 imap_port, pop3_port,
 CASE WHEN target = 'old' AND tls = 'imaps' THEN 'yes' END AS ssl,
 CASE WHEN target = 'old' AND tls = 'starttls' THEN 'yes' END AS starttls
 FROM ferry_route WHERE target = 'old' OR new_host <> '';

CREATE VIEW ferry_userdb AS SELECT login,
 CASE WHEN target = 'new' THEN 'cutover' ELSE 'presync' END AS ferry_phase
 FROM ferry_route;

CREATE VIEW ferry_transport AS SELECT login AS address,
 CASE WHEN target = 'new' THEN COALESCE((SELECT value FROM settings
 WHERE key = 'route_new_transport'), 'lmtp:unix:private/dovecot-lmtp')
 WHEN transport <> '' THEN transport
 ELSE 'smtp:[' || host || ']:25' END AS nexthop FROM ferry_route;
