"""The docs stay true: the configuration page is generated from the settings, and the README is a
short front door that links every page under docs/."""

from __future__ import annotations

import re
from pathlib import Path

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
