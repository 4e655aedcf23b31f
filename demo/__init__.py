"""The demo around `make dev`: embedded Postgres with a `customers` table, chDB, live traffic."""
