"""Pushing to the Hub, offline: HfApi methods patched to record what would be uploaded, every real network call fails,
and the token never appears in anything written."""

import json
import socket

import pytest

from hf_minitron.cli import main
from hf_minitron.errors import ConfigError
from hf_minitron.loading import save_model
from hf_minitron.stages import run_stage
from hf_minitron.testing import tiny_model

FAKE_TOKEN = "hf_FAKEtokenFORtestsONLY0123456789abcd"


@pytest.fixture
def no_network(monkeypatch):
    """Fail-closed transport: any socket connection or HTTP request is an error."""
    import httpx2 as httpx

    def refuse(*a, **k):
        raise AssertionError(f"unexpected network call: {a[1:2]}")

    monkeypatch.setattr(socket.socket, "connect", refuse)
    monkeypatch.setattr(httpx.Client, "send", refuse)
    monkeypatch.setattr(httpx.AsyncClient, "send", refuse)


@pytest.fixture
def hub(monkeypatch, no_network, tmp_path):
    """HfApi.create_repo / create_branch / upload_folder recorded instead of sent."""
    from huggingface_hub import CommitInfo, HfApi

    calls = []

    def create_repo(self, repo_id, **kw):
        calls.append(("create_repo", repo_id, kw, self.token))

    def create_branch(self, repo_id, **kw):
        calls.append(("create_branch", repo_id, kw, self.token))

    def upload_folder(self, *, repo_id, folder_path, **kw):
        from pathlib import Path

        from huggingface_hub import metadata_load
        from huggingface_hub.utils import filter_repo_objects

        folder = Path(folder_path)
        files = sorted(filter_repo_objects([p.relative_to(folder).as_posix() for p in folder.rglob("*") if p.is_file()],
                                           allow_patterns=kw.get("allow_patterns"),
                                           ignore_patterns=kw.get("ignore_patterns")))
        calls.append(("upload_folder", repo_id, {**kw, "files": files, "readme": metadata_load(folder / "README.md")},
                      self.token))
        return CommitInfo(commit_url=f"https://huggingface.co/{repo_id}/commit/abc", commit_message=kw["commit_message"],
                          commit_description="", oid="abc", pr_url=None)

    monkeypatch.setattr(HfApi, "create_repo", create_repo)
    monkeypatch.setattr(HfApi, "create_branch", create_branch)
    monkeypatch.setattr(HfApi, "upload_folder", upload_folder)
    monkeypatch.setenv("HF_TOKEN", FAKE_TOKEN)
    from huggingface_hub import constants

    monkeypatch.setattr(constants, "HF_TOKEN_PATH", str(tmp_path / "hf_home" / "token"))  # no real login cache
    return calls


@pytest.fixture
def carded(tmp_path, tokenizer):
    folder = save_model(tiny_model("llama"), tokenizer, tmp_path / "student")
    (folder / "log_history.json").write_text(json.dumps([{"loss": 2.0, "step": 1}, {"loss": 1.0, "step": 2}]))
    recipe = tmp_path / "recipe.yaml"
    recipe.write_text("teacher: default\ndata: corpus.jsonl\nstages:\n  distill: {max_steps: 2}\n")
    run_stage("card", {"model_dir": str(folder), "teacher": "default", "recipe": str(recipe)})
    (folder / "optimizer.pt").write_bytes(b"pickle")  # trainer state that must never be pushed
    (folder / "pytorch_model.bin").write_bytes(b"pickle")
    (folder / ".cache").mkdir()
    (folder / ".cache" / "x.lock").write_text("")
    return folder


def test_push_uploads_the_carded_folder_in_one_commit(hub, carded, tmp_path, capsys, caplog):
    assert main(["push", "--folder", str(carded), "--repo-id", "my-org/tiny-minitron", "--private", "true",
                 "--revision", "v1"]) == 0
    printed = json.loads(capsys.readouterr().out)
    assert [c[0] for c in hub] == ["create_repo", "create_branch", "upload_folder"]
    assert hub[0][2]["exist_ok"] is True and hub[0][2]["private"] is True and hub[1][2]["branch"] == "v1"
    assert all(c[3] == FAKE_TOKEN for c in hub)  # the token reaches HfApi, from the environment
    upload = hub[2][2]
    assert upload["files"] == ["README.md", "chat_template.jinja", "config.json", "generation_config.json",
                               "log_history.json", "model.safetensors", "plots/distillation_loss.png", "recipe.yaml",
                               "tokenizer.json", "tokenizer_config.json"]
    assert upload["revision"] == "v1" and upload["readme"]["license"] == "apache-2.0"
    assert upload["readme"]["base_model"] == "HuggingFaceTB/SmolLM2-135M-Instruct"
    assert upload["commit_message"] == ("Upload llama student (4 layers, hidden 64) pruned and distilled from "
                                        "HuggingFaceTB/SmolLM2-135M-Instruct")
    assert "10 files" in upload["commit_description"] and "model.safetensors" in upload["commit_description"]
    assert printed["metrics"]["commit_url"].endswith("/commit/abc") and printed["metrics"]["revision"] == "v1"
    written = [p for p in tmp_path.rglob("*") if p.is_file()]
    assert written and not [p for p in written if FAKE_TOKEN.encode() in p.read_bytes()]
    assert FAKE_TOKEN not in json.dumps(printed) + caplog.text + json.dumps(upload, default=str)


def test_token_from_the_login_cache(hub, carded, monkeypatch, tmp_path):
    monkeypatch.delenv("HF_TOKEN")
    (tmp_path / "hf_home").mkdir(exist_ok=True)
    (tmp_path / "hf_home" / "token").write_text(FAKE_TOKEN)
    run_stage("push", {"folder": str(carded), "repo_id": "my-org/tiny"})
    assert hub[-1][0] == "upload_folder" and hub[-1][3] == FAKE_TOKEN and "private" in hub[0][2]


def test_push_has_no_token_field():
    from hf_minitron.stages.push import PushConfig
    from hf_minitron.stages.base import config_fields

    assert not [f for f in config_fields(PushConfig) if "token" in f]


def test_bad_pushes_stop_before_any_upload(hub, carded, tmp_path, monkeypatch, capsys):
    with pytest.raises(ConfigError, match=r"repo_id='bad repo!/x' is not a valid Hub repository id"):
        run_stage("push", {"folder": str(carded), "repo_id": "bad repo!/x"})
    empty = tmp_path / "empty"
    empty.mkdir()
    with pytest.raises(ConfigError, match="holds no model \\(no config.json\\)"):
        run_stage("push", {"folder": str(empty), "repo_id": "org/name"})
    (carded / "model.safetensors").rename(tmp_path / "moved.safetensors")
    with pytest.raises(ConfigError, match=r"only pickled weights \(.*pytorch_model.bin.*\); only safetensors"):
        run_stage("push", {"folder": str(carded), "repo_id": "org/name"})
    (tmp_path / "moved.safetensors").rename(carded / "model.safetensors")
    readme = carded / "README.md"
    card = readme.read_text()
    readme.write_text(card.replace("license: apache-2.0", "license: unknown"))
    with pytest.raises(ConfigError, match="has license 'unknown', which is unknown to the Hub or unset"):
        run_stage("push", {"folder": str(carded), "repo_id": "org/name"})
    readme.unlink()
    with pytest.raises(ConfigError, match="has no README.md model card; render one first"):
        run_stage("push", {"folder": str(carded), "repo_id": "org/name"})
    readme.write_text(card)
    monkeypatch.delenv("HF_TOKEN")
    with pytest.raises(ConfigError, match="no Hugging Face token: set HF_TOKEN .* `hf auth login`"):
        run_stage("push", {"folder": str(carded), "repo_id": "org/name"})
    assert main(["push", "--folder", str(carded), "--repo_id", "org/name"]) == 2
    assert "hf-minitron push: error: no Hugging Face token" in capsys.readouterr().err
    assert hub == []


def test_refused_token_is_reported_without_the_token(hub, carded, monkeypatch):
    import httpx2 as httpx
    from huggingface_hub import HfApi
    from huggingface_hub.errors import HfHubHTTPError

    def unauthorized(self, repo_id, **kw):
        request = httpx.Request("POST", "https://huggingface.co/api/repos/create",
                                headers={"authorization": f"Bearer {FAKE_TOKEN}"})
        raise HfHubHTTPError(f"401 Unauthorized (token {FAKE_TOKEN})", response=httpx.Response(401, request=request))

    monkeypatch.setattr(HfApi, "create_repo", unauthorized)
    with pytest.raises(ConfigError) as err:
        run_stage("push", {"folder": str(carded), "repo_id": "org/name"})
    assert "the token was refused" in str(err.value) and FAKE_TOKEN not in str(err.value)
