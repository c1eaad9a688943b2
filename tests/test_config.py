import pytest

from alignkit import AlignkitError
from alignkit.config import DPOConfig, load_config


def _write(tmp_path, text):
    p = tmp_path / "c.yaml"
    p.write_text(text)
    return str(p)


def test_overrides_parse_values_and_nest(tmp_path):
    cfg = load_config(DPOConfig, _write(tmp_path, "data:\n  train: a.jsonl\n"),
                      ["train.lr=3e-5", "loss.type=ipo", "model.lora.r=4", "train.max_grad_norm=null"])
    assert cfg.train.lr == 3e-5 and cfg.loss.type == "ipo" and cfg.model.lora.r == 4
    assert cfg.train.max_grad_norm is None


@pytest.mark.parametrize("override, key", [
    ("loss.beta=-1", "loss.beta"),
    ("loss.type=dpo2", "loss.type"),
    ("train.micro_batch_size=3", "train.batch_size"),
    ("data.max_prompt_length=600", "data.max_prompt_length"),
    ("nosuch.key=1", "nosuch"),
    ("reference.mode=adapter", "model.lora"),
])
def test_invalid_values_name_the_key(tmp_path, override, key):
    with pytest.raises(AlignkitError, match=key.replace(".", r"\.")):
        load_config(DPOConfig, _write(tmp_path, "data:\n  train: a.jsonl\n"), [override])


def test_missing_required_section(tmp_path):
    with pytest.raises(AlignkitError, match="data: Field required"):
        load_config(DPOConfig, _write(tmp_path, "train:\n  lr: 1e-5\n"), [])


def test_not_yaml(tmp_path):
    with pytest.raises(AlignkitError, match="not valid YAML"):
        load_config(DPOConfig, _write(tmp_path, "data: [\n"), [])


def test_shipped_configs_validate():
    from pathlib import Path

    root = Path(__file__).resolve().parent.parent
    from alignkit.config import PairsConfig

    for command, schema in (("dpo", DPOConfig), ("pairs", PairsConfig)):
        paths = sorted((root / "configs" / command).glob("*.yaml"))
        assert paths
        for path in paths:
            first = path.read_text().splitlines()[0]
            wanted = "# alignkit pairs build --config" if command == "pairs" else "# alignkit dpo --config"
            assert first.startswith(wanted), path  # first line: the command that runs it
            load_config(schema, str(path), [])


def test_lora_layers_adapt_only_the_chosen_layers(tiny_model):
    from alignkit.config import LoraConfig
    from alignkit.models.load import add_lora, load_model

    model = add_lora(load_model(str(tiny_model)), LoraConfig(r=4, layers=[-1]))
    adapted = {name.split(".layers.")[1].split(".")[0] for name, p in model.named_parameters()
               if p.requires_grad}
    assert adapted == {"1"}  # the tiny model has layers 0 and 1; -1 is the top one
