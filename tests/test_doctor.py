"""``ferryman.doctor``: the SDK version rules, the price table's age, file permissions, sharing,
and the runner (a crashing check is reported, every finding is redacted)."""

from __future__ import annotations

import datetime as dt
import json
import os
import secrets
import stat
from pathlib import Path

import pytest

from ferryman import doctor, redact
from ferryman.config import Settings
from ferryman.doctor import FAIL, OK, SKIP, WARN, Check, check_permissions, check_prices, check_sdk, check_sharing

TODAY = dt.date(2026, 12, 4)


@pytest.fixture(autouse=True)
def isolated(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """Settings from nothing but the test: a data directory of its own, no file, no upstream key."""
    monkeypatch.setenv("FERRYMAN_DATA_DIR", str(tmp_path / "data"))
    monkeypatch.delenv("FERRYMAN_CONFIG", raising=False)
    monkeypatch.delenv("OPENAI_API_KEY", raising=False)
    monkeypatch.delenv("OPENAI_BASE_URL", raising=False)
    monkeypatch.chdir(tmp_path)
    return tmp_path / "data"


# -- the openai SDK ---------------------------------------------------------------------------


def test_the_installed_sdk_is_judged_and_the_tested_one_is_in_range():
    """A fresh install takes the newest openai the range allows (a release after the one tested
    is "untested", a warning, never a failure); the tested release is always inside the range."""
    import openai

    assert doctor.installed_openai() == openai.__version__
    assert check_sdk(openai.__version__, doctor.TESTED_OPENAI, doctor.required_openai()).status in (OK, WARN)
    assert check_sdk(doctor.TESTED_OPENAI, doctor.TESTED_OPENAI, doctor.required_openai()).status == OK


def test_the_required_range_is_pyprojects():
    import tomllib

    pyproject = tomllib.loads((Path(__file__).parents[1] / "pyproject.toml").read_text())
    declared = next(d for d in pyproject["project"]["dependencies"] if d.startswith("openai"))
    required = doctor.required_openai()
    assert required is not None
    assert sorted(required.split(",")) == sorted(declared.removeprefix("openai").split(","))


def test_an_older_sdk_is_told_to_upgrade():
    found = check_sdk("3.55.1", "3.60.0", ">=3.50,<4")
    assert found.status == WARN
    assert "older than 3.60.0" in found.message
    assert "openai>=3.60.0,<4" in found.hint


def test_a_newer_sdk_is_untested():
    found = check_sdk("3.61.0", "3.60.0", ">=3.50,<4")
    assert found.status == WARN
    assert "untested" in found.message
    assert "openai==3.60.0" in found.hint


def test_an_sdk_outside_the_range_fails():
    for version in ("3.49.9", "4.0.0", "2.8.1"):
        found = check_sdk(version, "3.60.0", ">=3.50,<4")
        assert found.status == FAIL, version
        assert ">=3.50,<4" in found.message


def test_no_sdk_fails():
    found = check_sdk(None, "3.60.0", ">=3.50,<4")
    assert found.status == FAIL
    assert "pip install 'openai>=3.50,<4'" in found.hint


@pytest.mark.parametrize(
    ("version", "requirement", "expected"),
    [
        ("3.60.0", ">=3.50,<4", True),
        ("3.50", ">=3.50,<4", True),
        ("4.0", ">=3.50,<4", False),
        ("3.60.1", "~=3.60.0", True),
        ("3.61.0", "~=3.60.0", False),
        ("3.60.7", "==3.60.*", True),
        ("3.61.0", "==3.60.*", False),
        ("3.60.0", "!=3.60.0", False),
        ("3.61.0rc1", ">=3.61.0", False),
        ("3.61.0.post1", ">=3.61.0", True),
    ],
)
def test_version_ranges(version, requirement, expected):
    assert doctor.satisfies(version, requirement) is expected


def test_pre_and_post_releases_sort_around_their_release():
    key = doctor.version_key
    assert key("3.61.0rc1") < key("3.61.0") < key("3.61.0.post1") < key("3.61.1")


# -- the price table --------------------------------------------------------------------------


def _shipped_as_of() -> dt.date:
    from ferryman import catalogue

    found = catalogue.parse_date(catalogue.price_table()["_source"]["as_of"])
    assert found is not None
    return found


def test_a_fresh_price_table_is_ok():
    found = check_prices(Settings(), _shipped_as_of() + dt.timedelta(days=60))
    assert [c.status for c in found] == [OK]
    assert found[0].details["age_days"] == 60


def test_a_price_table_older_than_60_days_warns():
    (found,) = check_prices(Settings(), _shipped_as_of() + dt.timedelta(days=61))
    assert found.status == WARN
    assert "61 days old" in found.message
    assert "pricing_file" in found.hint


def test_an_old_pricing_file_warns(tmp_path: Path):
    path = tmp_path / "prices.json"
    path.write_text(json.dumps({"_source": {"as_of": "2026-08-01"}, "models": {"my-model": {"input_usd_per_1m": 1}}}))
    shipped, own = check_prices(Settings(pricing_file=path), TODAY)
    assert shipped.status == OK
    assert own.check == "prices:file" and own.status == WARN
    assert "125 days old" in own.message


def test_an_undated_pricing_file_warns(tmp_path: Path):
    path = tmp_path / "prices.json"
    path.write_text(json.dumps({"models": {}}))
    _, own = check_prices(Settings(pricing_file=path), TODAY)
    assert own.status == WARN
    assert "no _source.as_of" in own.message


@pytest.mark.parametrize("content", ["{not json", json.dumps({"models": ["a"]}), json.dumps({"models": {"a": 1}})])
def test_a_broken_pricing_file_fails(tmp_path: Path, content: str):
    path = tmp_path / "prices.json"
    path.write_text(content)
    _, own = check_prices(Settings(pricing_file=path), TODAY)
    assert own.status == FAIL
    assert "is not a price table" in own.message


def test_a_missing_pricing_file_fails(tmp_path: Path):
    _, own = check_prices(Settings(pricing_file=tmp_path / "gone.json"), TODAY)
    assert own.status == FAIL
    assert "cannot be read" in own.message


# -- permissions ------------------------------------------------------------------------------


def _private_data_dir(data: Path) -> Path:
    data.mkdir(mode=0o700)
    os.chmod(data, 0o700)
    for name in ("ferryman.db", "audit.key", "admin.key"):
        (data / name).write_text("x")
        os.chmod(data / name, 0o600)
    return data


def _mode(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


def test_no_data_directory_is_nothing_to_check(isolated: Path):
    assert check_permissions(Settings()).status == SKIP
    assert not isolated.exists()


def test_a_private_data_directory_is_ok(isolated: Path):
    _private_data_dir(isolated)
    found = check_permissions(Settings())
    assert found.status == OK, found
    assert found.details["modes"][str(isolated / "admin.key")] == "0600"


def test_a_readable_key_file_fails_and_is_left_as_found(isolated: Path):
    data = _private_data_dir(isolated)
    os.chmod(data / "admin.key", 0o644)
    found = check_permissions(Settings())
    assert found.status == FAIL
    assert f"{data / 'admin.key'} is 0644: group or others can read it" in found.message
    assert found.hint == f"chmod 600 {data / 'admin.key'}"
    assert _mode(data / "admin.key") == 0o644  # reported, not changed


def test_the_sqlite_side_files_count(isolated: Path):
    data = _private_data_dir(isolated)
    (data / "ferryman.db-wal").write_text("")
    os.chmod(data / "ferryman.db-wal", 0o664)
    found = check_permissions(Settings())
    assert found.status == FAIL
    assert "ferryman.db-wal is 0664: group or others can write it" in found.message


def test_a_listable_data_directory_warns(isolated: Path):
    data = _private_data_dir(isolated)
    os.chmod(data, 0o755)
    found = check_permissions(Settings())
    assert found.status == WARN
    assert "others can list it" in found.message
    assert found.hint == f"chmod 700 {data}"


def test_a_writable_data_directory_fails(isolated: Path):
    data = _private_data_dir(isolated)
    os.chmod(data, 0o777)
    try:
        found = check_permissions(Settings())
    finally:
        os.chmod(data, 0o700)
    assert found.status == FAIL
    assert "others can add, replace or delete files in it" in found.message


def test_a_database_and_secret_files_outside_the_data_directory_count(tmp_path: Path, isolated: Path):
    _private_data_dir(isolated)
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    (elsewhere / "store.db").write_text("")
    os.chmod(elsewhere / "store.db", 0o644)
    (elsewhere / "audit-key").write_text("k" * 32)
    os.chmod(elsewhere / "audit-key", 0o640)
    settings = Settings(
        store={"url": f"sqlite:///{elsewhere / 'store.db'}"},
        audit={"checkpoint_key": f"file:{elsewhere / 'audit-key'}"},
    )
    found = check_permissions(settings)
    assert found.status == FAIL
    assert "store.db is 0644" in found.message and "audit-key is 0640" in found.message


# -- sharing ----------------------------------------------------------------------------------


def test_one_process_shares_nothing():
    assert check_sharing(Settings()).status == OK


def test_workers_without_redis_warn():
    found = check_sharing(Settings(gateway={"workers": 4}))
    assert found.status == WARN
    assert "gateway.workers = 4 without store.redis_url" in found.message
    assert "4 times its rpm/tpm" in found.message
    assert "store.redis_url" in found.hint


def test_workers_with_redis_are_ok():
    found = check_sharing(Settings(gateway={"workers": 2}, store={"redis_url": "redis://127.0.0.1:1/0"}))
    assert found.status == OK
    assert "one SQLite file: fine on one host" in found.message


def test_shared_settings_that_lack_a_shared_store_do_not_load():
    """The settings' own validator refuses them (exit 2 from the command): doctor never sees them."""
    from ferryman.errors import SettingsError

    with pytest.raises(SettingsError, match=r"store\.shared needs a shared database"):
        Settings(store={"shared": True})


# -- the runner -------------------------------------------------------------------------------


def test_a_crashing_check_is_reported_and_the_others_still_run(monkeypatch: pytest.MonkeyPatch):
    def broken(settings: Settings, today: dt.date) -> list[Check]:
        raise RuntimeError("boom")

    monkeypatch.setattr(doctor, "check_prices", broken)
    found = {c.check: c for c in doctor.run(Settings(), today=TODAY, offline=True)}
    assert found["prices"].status == FAIL
    assert "the check itself failed: RuntimeError: boom" in found["prices"].message
    assert found["sharing"].status == OK  # after it


def test_every_finding_is_redacted(monkeypatch: pytest.MonkeyPatch):
    secret = "-".join(("sk", "doctor", secrets.token_hex(12)))
    configured = secrets.token_hex(16)  # a key of no known shape, as an Azure key is
    redact.remember(configured)

    def leaky(settings: Settings, today: dt.date) -> list[Check]:
        return [Check("prices", WARN, f"saw {secret}", f"and {configured}", {"said": f"Bearer {configured}"})]

    monkeypatch.setattr(doctor, "check_prices", leaky)
    found = next(c for c in doctor.run(Settings(), today=TODAY, offline=True) if c.check == "prices")
    text = json.dumps(found.as_json())
    assert secret not in text and configured not in text
    assert redact.SECRET in found.message and redact.SECRET in found.hint


def test_exit_code():
    ok, warn, fail, skip = (Check("x", status, "") for status in (OK, WARN, FAIL, SKIP))
    assert doctor.exit_code([ok, warn, skip]) == 0
    assert doctor.exit_code([ok, fail]) == 1
    assert doctor.exit_code([ok, warn], strict=True) == 1
    assert doctor.exit_code([ok, skip], strict=True) == 0
