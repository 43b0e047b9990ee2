import pytest
import torch

from dfkd_core import create_model, list_architectures

ALL = list_architectures()


def test_registry_has_every_family():
    assert {
        "resnet20",
        "resnet56",
        "vgg11_bn",
        "vgg19_bn",
        "mobilenetv2_x0_5",
        "mobilenetv2_x1_4",
        "akamaster_resnet20",
        "akamaster_resnet56",
    } <= set(ALL)
    assert len(ALL) == 16


@pytest.mark.parametrize("arch", ALL)
def test_forward_shape(arch):
    model = create_model(arch).eval()
    with torch.no_grad():
        out = model(torch.randn(2, 3, 32, 32))
    assert out.shape == (2, 10)
    assert torch.isfinite(out).all()


def test_num_classes_changes_head():
    model = create_model("resnet20", num_classes=100)
    assert model.fc.out_features == 100


def test_akamaster_shortcut_is_parameter_free():
    model = create_model("akamaster_resnet20")
    assert not any("shortcut" in name for name in model.state_dict())
    assert "linear.weight" in model.state_dict()


def test_unknown_architecture_suggests_close_names():
    with pytest.raises(ValueError, match=r"unknown architecture 'resnet21'.*resnet20"):
        create_model("resnet21")


def test_bad_num_classes():
    with pytest.raises(ValueError, match="num_classes"):
        create_model("resnet20", num_classes=1)


def test_pattern_filter():
    assert list_architectures("vgg*") == ["vgg11_bn", "vgg13_bn", "vgg16_bn", "vgg19_bn"]
