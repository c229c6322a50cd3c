"""The docs stay true: the configuration page is generated from the settings, and the README is a
short front door that links every page under docs/."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from lvmq import docs

ROOT = Path(__file__).resolve().parent.parent


def test_configuration_page_is_generated_from_the_settings_and_fresh():
    assert docs.PAGE.read_text() == docs.render(), "docs/configuration.md is stale: run `python -m lvmq.docs`"
    assert docs.main(["--check"]) == 0


def test_configuration_page_names_every_setting_with_a_description():
    from config.settings import Settings

    page = docs.render()
    for name, field in Settings.model_fields.items():
        assert f"`LVM_{name.upper()}`" in page
        assert field.description, f"Settings.{name} has no description, so the generated page says nothing"


def test_check_fails_on_a_stale_page(tmp_path, monkeypatch):
    stale = tmp_path / "configuration.md"
    stale.write_text(docs.render().replace("LVM_REDIS_URL", "LVM_REDIS_ADDRESS"))
    monkeypatch.setattr(docs, "PAGE", stale)
    assert docs.main(["--check"]) == 1


def test_readme_is_a_front_door_linking_every_docs_page():
    readme = (ROOT / "README.md").read_text()
    assert readme.count("\n") <= 250
    linked = set(re.findall(r"\]\((docs/[^)#]+)\)", readme))
    pages = {f"docs/{p.name}" for p in (ROOT / "docs").glob("*.md")}
    assert pages - linked == set(), f"pages not linked from README.md: {sorted(pages - linked)}"
    assert linked - pages == set(), f"README.md links missing pages: {sorted(linked - pages)}"
    for command in ("make demo", "make test"):
        assert command in readme


def test_docs_links_point_at_files_that_exist():
    for page in [ROOT / "README.md", *(ROOT / "docs").glob("*.md")]:
        for target in re.findall(r"\]\(([^)#:]+)(?:#[^)]*)?\)", page.read_text()):
            assert (page.parent / target).exists(), f"{page.name} links {target}, which does not exist"


@pytest.fixture(scope="module")
def index():
    """What the project defines, read once for the tests below (every file, and lvmq's parser)."""
    from lvmq import docrefs

    return docrefs.Index(ROOT)


def test_the_docs_name_only_what_exists(index):
    from lvmq import docrefs

    assert docrefs.check(ROOT, index) == []


@pytest.mark.parametrize(
    "stale,why",
    [
        ("the loop lives in `worker/batchloop.py`", "file worker/batchloop.py does not exist"),
        ("see `wire/scripts/claim2.lua`", "does not exist"),
        ("`worker.loop.BatchLoop.retry_forever`", "does not import"),
        ("`BatchLoop.retry_forever`", "BatchLoop has no attribute retry_forever"),
        ("call `prepare_submit()`", "no function prepare_submit()"),
        ("run `make chaos-full`", "make target 'chaos-full' is not in the Makefile"),
        ("set LVM_NO_SUCH_SETTING=1", "LVM_NO_SUCH_SETTING is read by nothing"),
        ("`lvmq model unprepare`", "`lvmq model unprepare` is not a command"),
        ("`lvmq frobnicate`", "`lvmq frobnicate` is not a command"),
    ],
)
def test_the_docs_check_catches_each_kind_of_stale_name(tmp_path, stale, why, index):
    from lvmq import docrefs

    commands = index.lvmq_commands()
    (tmp_path / "page.md").write_text(f"# Stale\n\n{stale}\n")
    problems = docrefs.check_page(tmp_path / "page.md", index, commands, root_of=ROOT / "docs")
    assert any(why in p for p in problems), problems
    fresh = tmp_path / "fresh.md"
    fresh.write_text(
        "# Fresh\n\n`worker/loop.py`, `BatchLoop.retry_redis`, `make chaos`, LVM_REDIS_URL, `lvmq model prepare`, "
        "`worker.loop.BatchLoop.retry_redis`, `ChatClient.submit()`, `retry_after()`\n"
    )
    assert docrefs.check_page(fresh, index, commands, root_of=ROOT / "docs") == []


def test_sources_cite_only_files_that_exist(index):
    from lvmq import docrefs

    assert docrefs.check_sources(index) == []
