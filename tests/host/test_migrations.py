"""The host database's schema revisions (Alembic), on SQLite and on the machine's PostgreSQL."""

from __future__ import annotations

import ast
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import msgspec
import pytest
import sqlalchemy as sa
from alembic import command
from alembic.autogenerate import compare_metadata
from alembic.runtime.migration import MigrationContext

from host.campaign.quality import Judgement
from host.store import Store, StoreError, migrations
from host.store.deployments import DeploymentStore
from host.store.migrations.__main__ import check, make_revision
from host.store.models import Base
from host.store.schema import MODEL_MODULES, metadata

ROOT = Path(__file__).resolve().parents[2]
HEAD = "0003_search_judgement"


@pytest.fixture
def engine(db_url: str) -> Iterator[sa.Engine]:
    made = sa.create_engine(db_url)
    yield made
    made.dispose()


def _differences(engine: sa.Engine) -> list[object]:
    with engine.connect() as conn:
        context = MigrationContext.configure(conn, opts=migrations.context_options())
        return compare_metadata(context, metadata())


def _upgrade_by_revisions(engine: sa.Engine, to: str = "head") -> None:
    with engine.begin() as conn:
        command.upgrade(migrations.alembic_config(conn), to)


def _baseline() -> sa.MetaData:
    """The schema databases had before migrations (what create_all made then)."""
    return migrations.scripts().get_revision("0001_baseline").module._schema()


def _revision(engine: sa.Engine) -> str | None:
    with engine.connect() as conn:
        return migrations.current_revision(conn)


def test_every_module_that_defines_a_table_is_in_the_registry() -> None:
    modules, tables = set(), set()
    for path in (ROOT / "host").rglob("*.py"):
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.ClassDef) and any(
                isinstance(base, ast.Name) and base.id == "Base" for base in node.bases
            ):
                modules.add(".".join(path.relative_to(ROOT).with_suffix("").parts))
                tables |= {
                    statement.value.value
                    for statement in node.body
                    if isinstance(statement, ast.Assign)
                    and isinstance(statement.value, ast.Constant)
                    and any(getattr(t, "id", "") == "__tablename__" for t in statement.targets)
                }
    assert modules == set(MODEL_MODULES)
    code = "from host.store.schema import metadata; print(' '.join(sorted(metadata().tables)))"
    known = subprocess.run(
        [sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, check=True
    ).stdout.split()
    assert set(known) == tables and len(tables) >= 18


def test_the_revisions_build_the_schema_the_models_define(engine: sa.Engine) -> None:
    _upgrade_by_revisions(engine, "0001_baseline")
    assert _differences(engine), "the comparison must see the baseline's 32-bit columns"
    _upgrade_by_revisions(engine)
    assert _differences(engine) == []
    assert _revision(engine) == HEAD


def test_a_fresh_database_gets_the_models_tables_at_the_newest_revision(db_url: str) -> None:
    with Store(db_url) as store:
        assert set(metadata().tables) | {migrations.VERSION_TABLE} == set(store.table_names())
        assert _revision(store.engine) == HEAD
        assert _differences(store.engine) == []


def test_a_database_made_before_migrations_is_adopted_and_keeps_its_rows(
    engine: sa.Engine, db_url: str
) -> None:
    old = _baseline()
    # What Store() made before migrations; before the command pipeline the deploy sequences
    # (milliseconds since the epoch) were INTEGER, which PostgreSQL keeps to 32 bits.
    for table in ("deploy_sequences", "rollout_targets"):
        old.tables[table].c["sequence"].type = sa.Integer()
    old.create_all(engine)
    with engine.begin() as conn:
        conn.execute(old.tables["devices"].insert().values(
            device_id="pi-old", online=True, first_seen=1.0, last_seen=2.0))  # fmt: skip
        conn.execute(old.tables["artifacts"].insert().values(
            sha256="a" * 64, format="tflite", precision="fp32", size_bytes=1234, name="m",
            manifest={"sha256": "a" * 64}, created=3.0))  # fmt: skip
        conn.execute(old.tables["deploy_sequences"].insert().values(device_id="pi-old",
                                                                    sequence=7))  # fmt: skip
        conn.execute(old.tables["rollouts"].insert().values(
            rollout_id="r1", status="active", open=True, waves=[["pi-old"]], current_wave=1,
            wave_started=4.0, max_failures=0, settings={}, label="", reason="", created=4.0,
            updated=4.0))  # fmt: skip
    assert _revision(engine) is None

    with Store(db_url) as store:
        assert _revision(store.engine) == HEAD
        assert _differences(store.engine) == []
        device = store.get_device("pi-old")
        assert device is not None and (device.online, device.last_seen) == (True, 2.0)
        assert store.get_artifact("a" * 64) == {"manifest": {"sha256": "a" * 64}, "path": None}
        assert DeploymentStore(store).next_sequence("pi-old") > time.time() * 1000 - 60_000
        with store.read() as session:
            assert session.scalar(sa.text("SELECT current_wave FROM rollouts")) == 1
        big = {"sha256": "b" * 64, "format": "tflite", "precision": "fp32",
               "size_bytes": 5 * 2**30}  # fmt: skip
        store.add_artifact(big)  # 5 GiB: past a 32-bit column
        assert store.get_artifact("b" * 64)["manifest"] == big  # type: ignore[index]


def test_an_older_database_gets_the_nullable_columns_it_lacks_and_keeps_its_rows(
    engine: sa.Engine, db_url: str
) -> None:
    old = _baseline()
    targets = old.tables["rollout_targets"]
    for name in ("runtime", "threads"):  # what the table looked like before variants existed
        targets._columns.remove(targets.c[name])
    old.create_all(engine)
    with engine.begin() as conn:
        conn.execute(old.tables["devices"].insert().values(
            device_id="pi-old", online=False, first_seen=1.0, last_seen=1.0))  # fmt: skip
    with Store(db_url) as store:
        assert [d.device_id for d in store.list_devices()] == ["pi-old"]
        columns = {c["name"] for c in sa.inspect(store.engine).get_columns("rollout_targets")}
        assert {"runtime", "threads"} <= columns
        assert _differences(store.engine) == []


def test_a_missing_column_that_cannot_be_null_is_an_error_naming_it(
    engine: sa.Engine, db_url: str
) -> None:
    old = _baseline()
    devices = old.tables["devices"]
    devices._columns.remove(devices.c["online"])
    old.create_all(engine)
    with pytest.raises(StoreError, match=r"table devices without the column online"):
        Store(db_url)
    assert _revision(engine) is None  # nothing half-done: the next version can try again


def test_a_database_from_a_newer_version_is_refused_with_what_to_do(
    engine: sa.Engine, db_url: str
) -> None:
    Store(db_url).close()
    with engine.begin() as conn:
        conn.execute(sa.text(f"UPDATE {migrations.VERSION_TABLE} SET version_num = 'f00d'"))
    with pytest.raises(
        StoreError, match=r"revision f00d, which this version .* upgrade edgetailor"
    ):
        Store(db_url)


def test_optunas_tables_and_version_beside_the_hosts_are_left_alone(db_url: str) -> None:
    import optuna

    Store(db_url).close()
    storage = optuna.storages.RDBStorage(db_url)
    optuna.create_study(storage=storage, study_name="beside")
    storage.remove_session()
    storage.engine.dispose()
    with Store(db_url) as store:
        tables = set(store.table_names())
        assert {"alembic_version", migrations.VERSION_TABLE, "studies", "trials"} <= tables
        assert _differences(store.engine) == []
    assert optuna.load_study(study_name="beside", storage=db_url).study_name == "beside"


def test_processes_opening_a_fresh_database_at_once_all_succeed(db_url: str) -> None:
    code = f"from host.store import Store; Store({db_url!r}).close(); print('ok')"
    procs = [
        subprocess.Popen(
            [sys.executable, "-c", code], cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE
        )
        for _ in range(4)
    ]
    outcomes = [proc.communicate(timeout=120) for proc in procs]
    assert [p.returncode for p in procs] == [0, 0, 0, 0], [
        err.decode()[-800:] for _, err in outcomes
    ]
    with Store(db_url) as store:
        assert _revision(store.engine) == HEAD and _differences(store.engine) == []


def test_the_check_command_finds_the_models_and_the_revisions_alike() -> None:
    done = subprocess.run(
        [sys.executable, "-m", "host.store.migrations", "check"], cwd=ROOT, capture_output=True,
        text=True, timeout=120,
    )  # fmt: skip
    assert done.returncode == 0, done.stdout + done.stderr
    assert f"agree (head {HEAD})" in done.stdout


def test_a_new_model_makes_a_revision_that_creates_its_table(tmp_path: Path) -> None:
    probe = sa.Table(
        "probe_things", Base.metadata, sa.Column("thing_id", sa.BigInteger, primary_key=True)
    )
    try:
        assert check() is not None  # the models now have a table no revision makes
        path = make_revision("probe things", version_path=tmp_path)
    finally:
        Base.metadata.remove(probe)
    text = path.read_text()
    assert path.parent == tmp_path and f"down_revision = {HEAD!r}" in text
    assert "op.create_table(" in text and "'probe_things'" in text


def test_a_search_measurement_made_before_the_judgement_column_keeps_its_variant_and_judgement(
    engine: sa.Engine,
) -> None:
    _upgrade_by_revisions(engine, "0002_64bit_integers")
    old = {
        "candidate": "prune0.5+fp16",
        "recipe": "prune0.5",
        "format": "tflite",
        "precision": "fp16",
        "baseline_metric": 0.93,
        "drop_interval": [0.01, 0.04],
        "metric_value": 0.91,
    }
    table = sa.table(
        "search_measurements",
        *(sa.column(name) for name in ("search_id", "device_id", "variant", "state", "worker")),
        *(sa.column(name) for name in ("claim_until", "trial_number", "fleet_job_id")),
        *(sa.column(name) for name in ("created", "updated")),
        sa.column("row", sa.JSON),
    )
    with engine.begin() as conn:
        conn.execute(
            table.insert().values(
                search_id="s-1", device_id="pi-01", variant="v1", state="ok", worker="w",
                claim_until=0.0, trial_number=3, fleet_job_id="job-1", created=1.0, updated=2.0,
                row=old,
            )
        )  # fmt: skip
    _upgrade_by_revisions(engine)
    assert _revision(engine) == HEAD and _differences(engine) == []
    with engine.connect() as conn:
        got = conn.execute(
            sa.text(
                "SELECT candidate, recipe_name, format, precision, judgement, fleet_job_id "
                "FROM search_measurements WHERE search_id = 's-1'"
            )
        ).one()
    assert tuple(got[:4]) == ("prune0.5+fp16", "prune0.5", "tflite", "fp16")
    judgement = msgspec.json.decode(got[4], type=Judgement)
    assert judgement == Judgement(baseline_metric=0.93, drop_interval=[0.01, 0.04])
    assert got[5] == "job-1"
