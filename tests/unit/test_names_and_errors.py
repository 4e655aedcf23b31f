"""Postgres names as written and quoted; connection URLs described without credentials."""

import pytest

from user_code.sync.errors import SyncError, describe_url, redact, require_scheme
from user_code.sync.postgres_names import quote_pg_name, quote_pg_table, split_table_name
from user_code.sync.target_table import quote_ch_name


@pytest.mark.parametrize(
    ("source", "parts"),
    [
        ("public.customers", ("public", "customers")),
        ('public."Mixed Case"', ("public", "Mixed Case")),
        ('"my.schema"."a""b"', ("my.schema", 'a"b')),
        ("Sales.Orders", ("Sales", "Orders")),  # plain names are taken as written
    ],
)
def test_table_names_split_as_written(source, parts):
    assert split_table_name(source) == parts
    assert split_table_name(quote_pg_table(source)) == parts


@pytest.mark.parametrize("source", ["customers", "a.b.c", '"unclosed.t', ".t", "s."])
def test_names_that_are_not_schema_dot_table_are_refused(source):
    with pytest.raises(ValueError, match=r"must be schema\.table"):
        split_table_name(source)


def test_each_engine_quotes_its_own_way():
    assert quote_pg_name('a"b') == '"a""b"'
    assert quote_ch_name("a`b\\c") == "`a\\`b\\\\c`"


def test_urls_are_described_without_user_or_password():
    url = "postgresql://sync:s3cret@db.example.com:5432/app?sslmode=require"
    assert describe_url(url) == "postgresql://db.example.com:5432/app"
    assert describe_url("chdb:///var/lib/ch?database=a") == "chdb:///var/lib/ch"
    assert redact("FATAL: password s3cret rejected", url) == "FATAL: password *** rejected"


def test_a_url_of_the_wrong_kind_is_a_configuration_error():
    with pytest.raises(SyncError, match=r"PG_URL must be a URL starting with postgresql://") as e:
        require_scheme("mysql://root:pw@host/db", "PG_URL", ("postgresql",))
    assert "pw" not in str(e.value)
