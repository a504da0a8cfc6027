"""Model cards (`hf_hem.cards`) and the Hub round trip through the loopback server (`tests/hub_server.py`)."""

import json
import subprocess
import sys
import textwrap
import urllib.error
import urllib.request
from pathlib import Path

import numpy as np
import pytest
from huggingface_hub import ModelCard

from hf_hem.cards import generate_model_card, training_summary_from_args, write_model_card


try:  # tests/ may or may not become a package
    from .helpers import with_repo_on_pythonpath
    from .hub_server import DUMMY_TOKEN, LoopbackHub, git_blob_sha1, hub_client_env, run_hub_server
except ImportError:
    from helpers import with_repo_on_pythonpath
    from hub_server import DUMMY_TOKEN, LoopbackHub, git_blob_sha1, hub_client_env, run_hub_server


CITATION_AUTHORS = 'author={Spratling, M. W. and Sch{\\"u}tt, H. H.}'


def _eval_results_by_name(card: ModelCard) -> dict:
    return {result.metric_name: result for result in card.data.eval_results}


# --------------------------------------------------------------------------------------------------- card rendering
def test_hem_classification_card_round_trips_model_index():
    card = generate_model_card(
        model_name="vit-hem-beans",
        base_model="google/vit-base-patch16-224-in21k",
        hub_model_id="someone/vit-hem-beans",
        dataset_name="AI-Lab-Makerere/beans",
        eval_split="validation",
        loss_name="hem",
        loss_settings={"margin": 0.2, "margin_scale": 2000, "num_train_samples": 50_000},
        # What Trainer.evaluate() returns: prefixed keys, bookkeeping entries and numpy scalars.
        metrics={
            "eval_accuracy": 0.9375,
            "eval_rejection_auroc": np.float64(0.8125),
            "eval_loss": 0.05,
            "eval_runtime": 1.5,
            "eval_samples_per_second": 100.0,
            "epoch": 3.0,
        },
        tags=["vision"],
    )
    text = str(card)

    parsed = ModelCard(text)  # parse back exactly what would be pushed
    assert parsed.data.tags == ["hf-hem", "hem-loss", "vision"]
    assert parsed.data.pipeline_tag == "image-classification"
    assert parsed.data.base_model == "google/vit-base-patch16-224-in21k"
    assert parsed.data.datasets == ["AI-Lab-Makerere/beans"]
    assert parsed.data.library_name == "transformers"
    results = _eval_results_by_name(parsed)
    assert set(results) == {"Accuracy", "Unknown-class rejection AUROC (MSP)"}  # no loss, runtime or epoch
    assert results["Accuracy"].metric_type == "accuracy"
    assert results["Accuracy"].metric_value == pytest.approx(0.9375)
    assert results["Unknown-class rejection AUROC (MSP)"].metric_type == "roc_auc"
    assert results["Unknown-class rejection AUROC (MSP)"].metric_value == pytest.approx(0.8125)
    for result in results.values():
        assert result.task_type == "image-classification"
        assert result.dataset_type == result.dataset_name == "AI-Lab-Makerere/beans"
        assert result.dataset_split == "validation"
    assert parsed.data.model_name == "vit-hem-beans"

    assert "# vit-hem-beans" in text
    assert "fine-tuned version of [google/vit-base-patch16-224-in21k](https://huggingface.co/google/" in text
    assert "with the **HEM** loss" in text
    assert "| Margin μ | 0.2 |" in text
    assert "| Margin scale M | 2000 |" in text
    assert "| Training samples S | 50000 |" in text
    assert "| Accuracy (`accuracy`) | 0.9375 |" in text
    assert "| Evaluation loss (HEM) (`loss`) | 0.0500 |" in text
    assert "runtime" not in text.lower()
    assert "\\sqrt{M / S}" in text  # the formula survived Jinja
    assert 'AutoModelForImageClassification.from_pretrained("someone/vit-hem-beans")' in text
    assert 'AutoImageProcessor.from_pretrained("someone/vit-hem-beans")' in text
    assert "trust_remote_code" not in text
    assert "- transformers: " in text and "- torch: " in text and "- hf_hem: " in text
    assert "@article{spratling2025hem," in text and CITATION_AUTHORS in text
    assert "journal={arXiv preprint arXiv:2501.12191}" in text


def test_hem_plus_card_summarises_per_class_margins():
    class_names = ["cat", "dog", "bird", "fish"]
    margins = np.array([0.1, 0.4, 0.2, 0.8])
    card = generate_model_card(
        model_name="vit-hemplus-lt",
        dataset_name="someone/long-tailed-pets",
        loss_name="hem_plus",  # alias of "hem+"
        loss_settings={"margin_scale": 2000, "margins": margins, "class_counts": {"cat": 900, "dog": 50, "bird": 300}},
        class_names=class_names,
        metrics={"accuracy": 0.5},
    )
    text = str(card)
    assert card.data.tags == ["hf-hem", "hem-loss", "hem-plus-loss"]
    assert "with the **HEM+** loss" in text
    # min / median / max of [0.1, 0.4, 0.2, 0.8] are 0.1, 0.3, 0.8
    assert "**Per-class margin μ_c** (4 classes): min 0.1, median 0.3, max 0.8." in text
    assert "**Training samples per class** (3 classes): min 50, median 300, max 900." in text
    assert "<details>" in text and "| fish | 0.8 |" in text and "| dog | 50 |" in text

    with pytest.raises(ValueError, match="class_names"):
        generate_model_card(model_name="m", loss_settings={"margins": [0.1, 0.2]}, class_names=["only-one"])


def test_segmentation_card_indexes_mean_iou():
    card = generate_model_card(
        model_name="segformer-hem-ade",
        task="semantic-segmentation",
        dataset_name="scene_parse_150",
        loss_name="hem",
        metrics={"eval_mean_iou": 0.4125, "eval_mean_accuracy": 0.5, "eval_overall_accuracy": 0.75, "eval_loss": 0.3},
        per_class_table={"wall": 0.71, "building": 0.625},
    )
    parsed = ModelCard(str(card))
    results = _eval_results_by_name(parsed)
    assert results["Mean IoU"].metric_type == "mean_iou"
    assert results["Mean IoU"].metric_value == pytest.approx(0.4125)
    assert results["Pixel accuracy"].metric_type == "accuracy"
    assert {result.task_type for result in results.values()} == {"image-segmentation"}
    assert parsed.data.pipeline_tag == "image-segmentation"
    text = str(card)
    assert "AutoModelForSemanticSegmentation.from_pretrained" in text
    assert "### Per-class IoU" in text and "| wall | 0.7100 |" in text


def test_card_without_dataset_shows_but_does_not_index_metrics():
    card = generate_model_card(model_name="tiny", metrics={"accuracy": 0.5})
    assert card.data.eval_results is None
    assert "model-index" not in str(card)
    assert "| Accuracy (`accuracy`) | 0.5000 |" in str(card)
    assert "The training dataset was not recorded." in str(card)


def test_local_dataset_is_named_and_indexed_without_a_hub_link():
    on_hub = generate_model_card(model_name="tiny", dataset_name="user/scenes", metrics={"accuracy": 0.5})
    local = generate_model_card(
        model_name="tiny", dataset_name="my_scenes", dataset_on_hub=False, metrics={"accuracy": 0.5}
    )
    assert "https://huggingface.co/datasets/user/scenes" in str(on_hub) and on_hub.data.datasets == ["user/scenes"]
    assert "huggingface.co/datasets" not in str(local)
    assert "Trained on `my_scenes`." in str(local)
    assert not local.data.datasets
    assert [result.dataset_name for result in ModelCard(str(local)).data.eval_results] == ["my_scenes"]


def test_baseline_card_is_not_tagged_as_hem():
    card = generate_model_card(model_name="vit-ce", loss_name="cross_entropy", dataset_name="d/s", metrics={"f1": 1})
    assert card.data.tags == ["hf-hem", "cross-entropy-loss"]
    assert "with the **cross-entropy** loss" in str(card)
    assert "HEM only changes how the model was trained" not in str(card)


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"model_name": ""}, "model_name"),
        ({"model_name": "m", "task": "object-detection"}, "task"),
        ({"model_name": "m", "metrics": {"accuracy": "high"}}, "accuracy"),
        ({"model_name": "m", "metrics": {"per_category_iou": [0.1, 0.2]}}, "per_class_table"),
        ({"model_name": "m", "metrics": {"accuracy": 0.1, "eval_accuracy": 0.2}}, "twice"),
        ({"model_name": "m", "base_model": "not a repo id!"}, "base_model"),
        ({"model_name": "m", "loss_name": ""}, "loss_name"),
        ({"model_name": "m", "tags": "vision"}, "tags"),
    ],
)
def test_bad_arguments_raise_value_error(kwargs, message):
    with pytest.raises(ValueError, match=message):
        generate_model_card(**kwargs)


def test_write_model_card_saves_readme(tmp_path):
    local_base = tmp_path / "local-base-model"
    local_base.mkdir()
    path = write_model_card(
        tmp_path / "checkpoint-10",
        model_name="tiny",
        base_model=str(local_base),  # a local folder is not a Hub reference: dropped
        dataset_name="someone/data",
        metrics={"accuracy": 0.25},
    )
    assert path == tmp_path / "checkpoint-10" / "README.md"
    loaded = ModelCard.load(path)
    assert loaded.data.base_model is None
    assert loaded.data.eval_results[0].metric_value == pytest.approx(0.25)


def test_training_summary_from_training_arguments(tmp_path):
    from transformers import TrainingArguments

    args = TrainingArguments(
        output_dir=str(tmp_path),
        learning_rate=3e-4,
        per_device_train_batch_size=4,
        gradient_accumulation_steps=2,
        num_train_epochs=2,
        seed=7,
        report_to="none",
        use_cpu=True,
    )
    summary = training_summary_from_args(args)
    assert summary["learning_rate"] == 3e-4
    assert summary["total_train_batch_size"] == 8
    assert summary["seed"] == 7
    assert "max_steps" not in summary  # -1 means "unused"
    text = str(generate_model_card(model_name="m", training_summary=summary))
    assert "| `learning_rate` | 0.0003 |" in text and "| `total_train_batch_size` | 8 |" in text


def test_template_is_found_in_a_source_checkout():
    from hf_hem import cards

    assert cards._template_path(cards.MODEL_CARD_TEMPLATE).is_file()
    with pytest.raises(FileNotFoundError, match="no_such_template"):
        cards._template_path("no_such_template.md")


# --------------------------------------------------------------------------------------------------- loopback server
def _request(url: str, method: str = "GET", data: dict | None = None, token: str | None = DUMMY_TOKEN):
    """(status, headers, body) of one request; HTTP errors are returned, not raised."""
    headers = {"Content-Type": "application/json"}
    if token:
        headers["Authorization"] = f"Bearer {token}"
    body = json.dumps(data).encode() if data is not None else None
    request = urllib.request.Request(url, data=body, method=method, headers=headers)
    try:
        with urllib.request.urlopen(request, timeout=10) as response:
            return response.status, response.headers, response.read()
    except urllib.error.HTTPError as error:
        return error.code, error.headers, error.read()


def test_loopback_hub_speaks_the_hub_error_protocol(tmp_path):
    with run_hub_server(tmp_path / "hub") as endpoint:
        assert _request(f"{endpoint}/api/repos/create", "POST", {"name": "r"}, token=None)[0] == 401
        status, _, body = _request(f"{endpoint}/api/repos/create", "POST", {"name": "r", "organization": None})
        assert status == 200 and json.loads(body)["url"] == f"{endpoint}/user/r"
        status, _, body = _request(f"{endpoint}/api/repos/create", "POST", {"name": "r"})
        assert status == 409 and json.loads(body)["url"] == f"{endpoint}/user/r"  # exist_ok reads the url

        status, headers, _ = _request(f"{endpoint}/user/r/resolve/main/config.json", "HEAD")
        assert status == 404 and headers["X-Error-Code"] == "EntryNotFound" and headers["X-Repo-Commit"]
        status, headers, _ = _request(f"{endpoint}/user/missing/resolve/main/config.json", "HEAD")
        assert status == 404 and headers["X-Error-Code"] == "RepoNotFound"
        status, headers, _ = _request(f"{endpoint}/user/r/resolve/no-such-branch/.gitattributes", "HEAD")
        assert status == 404 and headers["X-Error-Code"] == "RevisionNotFound"
        status, headers, body = _request(f"{endpoint}/user/r/resolve/main/.gitattributes")
        assert status == 200 and headers["ETag"] == f'"{git_blob_sha1(body)}"'

        broken = "---\nmodel-index:\n- name: m\n  results:\n  - task: {type: image-classification}\n---\n"
        status, _, body = _request(f"{endpoint}/api/validate-yaml", "POST", {"content": broken, "repoType": "model"})
        assert status == 400 and "dataset.name is required" in body.decode()
        card = str(generate_model_card(model_name="m", dataset_name="d/s", metrics={"accuracy": 1.0}))
        assert _request(f"{endpoint}/api/validate-yaml", "POST", {"content": card, "repoType": "model"})[0] == 200

        assert _request(f"{endpoint}/api/spaces/user/r")[0] == 404
    assert (tmp_path / "hub" / "user" / "r" / ".gitattributes").is_file()


def test_loopback_hub_serves_dataset_repos(tmp_path, hub_reachable):
    """The dataset routes that `datasets.load_dataset` and `HfFileSystem` use, through `HfApi` itself (in-process:
    `endpoint=` reaches every call made here); the script tests load real datasets through them."""
    from huggingface_hub import CommitOperationAdd, HfApi
    from huggingface_hub.errors import RepositoryNotFoundError

    files = {"README.md": b"---\nconfigs:\n- config_name: a\n  data_files: a/*.csv\n---\n"}
    files.update({f"a/part-{index}.csv": f"x\n{index}\n".encode() for index in range(3)})
    with LoopbackHub(tmp_path / "hub", tree_page_size=2) as hub:
        api = HfApi(endpoint=hub.endpoint, token=DUMMY_TOKEN)
        url = api.create_repo("org/data", repo_type="dataset")
        assert url == f"{hub.endpoint}/datasets/org/data" and url.repo_type == "dataset"
        assert api.create_repo("org/data", repo_type="dataset", exist_ok=True).repo_id == "org/data"  # 409 + url
        first = api.create_commit(
            "org/data",
            [CommitOperationAdd("README.md", files["README.md"])],
            commit_message="card",
            repo_type="dataset",
        )
        operations = [CommitOperationAdd(path, content) for path, content in files.items() if path != "README.md"]
        second = api.create_commit("org/data", operations, commit_message="shards", repo_type="dataset")
        hub.add_dataset("org/data", {}, aliases=("data",), title="alias")
        assert not api.repo_exists("org/data")  # a dataset repo is not a model repo

        info = api.dataset_info("data")  # the bare name redirects to the repo
        assert info.id == "org/data" and info.card_data["configs"][0]["config_name"] == "a"
        assert [sibling.rfilename for sibling in info.siblings] == [".gitattributes", *sorted(files)]
        assert api.dataset_info("org/data", revision=second.oid).sha == second.oid
        # Three files under a/ with two entries a page: two pages, each entry with the commit that last changed it.
        tree = list(api.list_repo_tree("org/data", "a", repo_type="dataset", expand=True))
        assert [entry.path for entry in tree] == sorted(files)[1:]
        assert {entry.last_commit.oid for entry in tree} == {second.oid}
        root = {entry.path: entry for entry in api.list_repo_tree("org/data", repo_type="dataset", expand=True)}
        assert root["README.md"].last_commit.oid == first.oid and root["a"].last_commit.oid == second.oid
        paths = api.get_paths_info("org/data", ["a", "a/part-1.csv", "missing"], repo_type="dataset", expand=True)
        assert [(type(entry).__name__, entry.path) for entry in paths] == [
            ("RepoFolder", "a"),
            ("RepoFile", "a/part-1.csv"),
        ]
        assert paths[1].blob_id == git_blob_sha1(files["a/part-1.csv"]) and paths[1].size == len(files["a/part-1.csv"])
        local = api.hf_hub_download("data", "a/part-2.csv", repo_type="dataset", cache_dir=tmp_path / "cache")
        assert Path(local).read_bytes() == files["a/part-2.csv"]
        with pytest.raises(RepositoryNotFoundError):
            api.dataset_info("org/other")
        served = {(method, path.split("?")[0], status) for method, path, status in hub.requests}
        assert hub.unhandled_requests == [] and hub.server_errors == []
    assert ("GET", "/api/datasets/data", 307) in served and ("GET", "/api/datasets/org/data", 200) in served
    assert ("POST", "/api/datasets/org/data/paths-info/main", 200) in served
    pages = [path for _, path, _ in hub.requests if path.startswith("/api/datasets/org/data/tree/main/a?")]
    assert len(pages) == 2 and "cursor=2" in pages[1]  # the second page came from the Link header
    assert ("HEAD", "/datasets/data/resolve/main/a/part-2.csv", 307) in served
    assert (tmp_path / "hub" / "datasets" / "org" / "data" / "a" / "part-0.csv").read_bytes() == b"x\n0\n"


def test_pipelines_load_hub_datasets_under_their_namespaced_ids(tmp_path, monkeypatch, hub_reachable):
    """`--dataset_name glue` reaches the data as `nyu-mll/glue` (huggingface_hub rejects `hf://` paths without a
    namespace); namespaced ids and local folders are passed through without asking the Hub, and a name the Hub does
    not know is left for `load_dataset` to report."""
    import huggingface_hub

    from hf_hem.pipelines import hub_dataset_id

    with LoopbackHub(tmp_path / "hub") as hub:
        hub.add_dataset("nyu-mll/glue", {"README.md": b"---\n---\n"}, aliases=("glue",), title="glue")
        # HfApi() reads the endpoint from the constants when it is built, as a pipeline's call does.
        monkeypatch.setattr(huggingface_hub.constants, "ENDPOINT", hub.endpoint)
        assert hub_dataset_id("glue", token=DUMMY_TOKEN) == "nyu-mll/glue"
        assert hub_dataset_id("unknown_name", token=DUMMY_TOKEN) == "unknown_name"
        asked = len(hub.requests)
        assert hub_dataset_id("org/data") == "org/data"
        assert hub_dataset_id(str(tmp_path)) == str(tmp_path)
        assert len(hub.requests) == asked  # neither asked the Hub
    assert ("GET", "/api/datasets/glue", 307) in hub.requests
    assert ("GET", "/api/datasets/unknown_name", 404) in hub.requests


# The client half of the end-to-end test. It runs in a fresh interpreter because huggingface_hub reads HF_ENDPOINT at
# import time and transformers caches an HfApi; the assertions live in the test, on what the server received.
_CLIENT_SCRIPT = textwrap.dedent(
    """
    import json
    import sys
    from pathlib import Path

    import torch
    from huggingface_hub import HfApi, ModelCard, snapshot_download
    from transformers import AutoModelForImageClassification

    from hf_hem.cards import write_model_card
    from helpers import tiny_vit  # tests/helpers.py, on PYTHONPATH

    work = Path(sys.argv[1])
    labels = ["circle", "square", "triangle"]
    model = tiny_vit(
        num_labels=3, id2label=dict(enumerate(labels)), label2id={label: index for index, label in enumerate(labels)}
    )
    model.save_pretrained(work / "local")
    write_model_card(
        work / "local",
        model_name="tiny-vit-hem",
        hub_model_id="user/tiny-vit-hem",
        dataset_name="user/toy-shapes",
        eval_split="validation",
        loss_name="hem",
        loss_settings={"margin": 0.2, "margin_scale": 2000, "num_train_samples": 50000},
        metrics={"eval_accuracy": 0.75, "eval_rejection_auroc": 0.8125, "eval_loss": 0.5},
    )

    def same_weights(other):
        mine, theirs = model.state_dict(), other.state_dict()
        return mine.keys() == theirs.keys() and all(torch.equal(mine[key], theirs[key]) for key in mine)

    api = HfApi()
    result = {"whoami": api.whoami()["name"]}
    repo_url = api.create_repo("tiny-vit-hem")  # no namespace: the token's user
    result["repo_id"] = repo_url.repo_id
    api.create_repo("user/tiny-vit-hem", exist_ok=True)
    commit = api.upload_folder(repo_id="user/tiny-vit-hem", folder_path=work / "local", commit_message="Add model")
    result["commit_oid"] = commit.oid

    snapshot = snapshot_download("user/tiny-vit-hem", cache_dir=work / "fresh_cache")
    result["snapshot"] = snapshot
    reloaded = AutoModelForImageClassification.from_pretrained("user/tiny-vit-hem", cache_dir=work / "fresh_cache2")
    result["from_pretrained_equal"] = same_weights(reloaded)
    result["reloaded_labels"] = [reloaded.config.id2label[index] for index in range(3)]
    card = ModelCard.load("user/tiny-vit-hem")
    result["card_metrics"] = {item.metric_name: item.metric_value for item in card.data.eval_results}
    result["card_tags"] = card.data.tags

    # transformers' own push path (create_repo + create_commit through its HfApi singleton)
    model.push_to_hub("user/tiny-vit-hem-2", tags=["hf-hem"], commit_message="push_to_hub")
    pushed = AutoModelForImageClassification.from_pretrained("user/tiny-vit-hem-2", cache_dir=work / "fresh_cache3")
    result["push_to_hub_equal"] = same_weights(pushed)

    # Trainer.push_to_hub (init_hf_repo + upload_folder with the Trainer's ignore patterns)
    from transformers import Trainer, TrainingArguments

    args = TrainingArguments(
        output_dir=str(work / "trainer_out"), push_to_hub=True, hub_model_id="user/tiny-vit-hem-trainer",
        save_strategy="no", report_to="none", use_cpu=True,
    )
    Trainer(model=model, args=args).push_to_hub(commit_message="End of training")
    (work / "result.json").write_text(json.dumps(result))
    """
)


@pytest.mark.slow
def test_push_and_download_through_loopback_hub(tmp_path):
    script = tmp_path / "client.py"
    script.write_text(_CLIENT_SCRIPT)
    with LoopbackHub(tmp_path / "hub") as hub:
        env = with_repo_on_pythonpath(hub_client_env(hub.endpoint, hf_home=tmp_path / "hf_home"), tests_dir=True)
        completed = subprocess.run(
            [sys.executable, str(script), str(tmp_path)], env=env, capture_output=True, text=True, timeout=240
        )
        assert completed.returncode == 0, completed.stderr[-4000:]
        assert hub.unhandled_requests == []
        assert hub.server_errors == []
        uploaded = hub.files("user/tiny-vit-hem")
        pushed = hub.files("user/tiny-vit-hem-2")
        trainer_pushed = hub.files("user/tiny-vit-hem-trainer")
        requests = [(method, path.split("?")[0]) for method, path, _ in hub.requests]

    result = json.loads((tmp_path / "result.json").read_text())
    assert result["whoami"] == "user" and result["repo_id"] == "user/tiny-vit-hem"

    # Every local file arrived byte for byte, and a fresh cache downloads the same bytes back.
    local = tmp_path / "local"
    local_files = {path.name: path.read_bytes() for path in local.iterdir()}
    assert {"config.json", "model.safetensors", "README.md"} <= set(local_files)
    for name, content in local_files.items():
        assert uploaded[name] == content, name
        assert (Path(result["snapshot"]) / name).read_bytes() == content, name
    assert (tmp_path / "hub" / "user" / "tiny-vit-hem" / "model.safetensors").read_bytes() == local_files[
        "model.safetensors"
    ]
    assert ("POST", "/api/models/user/tiny-vit-hem/commit/main") in requests
    assert ("POST", "/api/validate-yaml") in requests  # README metadata was validated before the commit

    assert result["from_pretrained_equal"] is True
    assert result["reloaded_labels"] == ["circle", "square", "triangle"]
    assert result["card_metrics"] == {"Accuracy": 0.75, "Unknown-class rejection AUROC (MSP)": 0.8125}
    assert result["card_tags"][:2] == ["hf-hem", "hem-loss"]

    assert result["push_to_hub_equal"] is True
    assert {"config.json", "model.safetensors", "README.md"} <= set(pushed)
    assert "hf-hem" in ModelCard(pushed["README.md"].decode()).data.tags
    assert {"config.json", "model.safetensors", "training_args.bin", "README.md"} <= set(trainer_pushed)
