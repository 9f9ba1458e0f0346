"""Ferry test harness: throwaway OLD/NEW Dovecot pair, corpus, IMAP snapshots."""
