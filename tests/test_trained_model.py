"""Using a trained model: a run's last.ckpt loads the Lightning way with no other arguments, and
as a plain classifier of raw uint8 images, both giving the logits of the run's own evaluation."""
import json

import torch
from omegaconf import OmegaConf

from reproduce.data.datamodule import load_arrays
from reproduce.models import build
from reproduce.module import PIXEL_MEAN, ClassifierModule, load_classifier

from .conftest import run_cli


def test_a_checkpoint_classifies_raw_images_as_the_run_evaluated_them(tmp_path):
    run_cli("resnet", "--smoke", "models=[resnet8]", "trainer.threads=1", "wandb.mode=disabled",
            f"out_dir={tmp_path}", timeout=300)
    run = tmp_path / "resnet" / "resnet8"
    ckpt_path = run / "checkpoints" / "last.ckpt"
    cfg = OmegaConf.load(run / "config.yaml")
    _, _, test_x, test_y = load_arrays(cfg.data)  # raw uint8 images, as a user has them

    classifier = load_classifier(ckpt_path)  # weights_only=True inside
    with torch.no_grad():
        logits = classifier(test_x)
    err = float((logits.argmax(1) != test_y).sum()) * 100 / len(test_y)
    assert err == json.loads((run / "status.json").read_text())["final_test_err"]

    # Lightning's own way, no arguments but the path
    module = ClassifierModule.load_from_checkpoint(ckpt_path, map_location="cpu").eval()
    checkpoint = torch.load(ckpt_path, map_location="cpu", weights_only=True)
    x = test_x.float().div(255).sub(checkpoint[PIXEL_MEAN])
    with torch.no_grad():
        assert torch.equal(module(x), logits)
    # and by hand: torch.load + models.build, the net's own keys under "model."
    net = build(checkpoint["hyper_parameters"]["model"]).eval()
    net.load_state_dict({k.removeprefix("model."): v for k, v in checkpoint["state_dict"].items()
                         if k.startswith("model.")})
    with torch.no_grad():
        assert torch.allclose(net(x), logits, rtol=1e-5, atol=1e-5)  # channels_last aside, the same net
