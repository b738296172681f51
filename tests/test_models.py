import pytest
import torch
from torchvision.models import resnet18

from featurestore.weights import WeightsError, load_student, load_teacher, state_hash
from models import imgaud2vid_student, r2plus1d_teacher


def test_student_gives_256_256_512_and_class_logits():
    torch.manual_seed(0)
    net = imgaud2vid_student(num_classes=7).eval()
    frames = torch.randint(0, 255, (2, 112, 112, 3), dtype=torch.uint8)
    mel = torch.randn(2, 40, 101)
    with torch.inference_mode():
        z_i, z_a, fused, logits = net(frames, mel)
        # uint8 RGB (B, H, W, 3) -> channels first, /255, ImageNet mean and std per colour (R, G, B)
        mean, std = torch.tensor([0.485, 0.456, 0.406]), torch.tensor([0.229, 0.224, 0.225])
        x = torch.stack([(frames[..., c].float() / 255 - mean[c]) / std[c] for c in range(3)], 1)
        want_i = net.image_net.proj(net.image_net.trunk(x))
        # z^A by hand: a torchvision ResNet-18 with a 1-channel conv1 carrying the audio trunk's weights, stem to
        # layer4, then the paper's pooling over time only (the 2 frequency rows kept, channel-major), then the FC
        r = resnet18(weights=None)
        r.conv1 = torch.nn.Conv2d(1, 64, kernel_size=7, stride=2, padding=3, bias=False)
        a = net.audio_net
        r.load_state_dict({**{k: v for k, v in r.state_dict().items() if k.startswith("fc.")},
                           **{f"{name}.{k}": v for name, mod in zip(("conv1", "bn1", "relu", "maxpool", "layer1",
                                                                     "layer2", "layer3", "layer4"), a.trunk)
                              for k, v in mod.state_dict().items()}})
        r.eval()
        fmap = r.layer4(r.layer3(r.layer2(r.layer1(r.maxpool(r.relu(r.bn1(r.conv1(mel[:, None]))))))))
        assert fmap.shape == (2, 512, 2, 4)                     # 40 mel bins -> 2 rows, 101 frames -> 4 columns
        want_a = fmap.mean(3).flatten(1) @ a.proj.weight.T + a.proj.bias
        want_fused = net.fusion.net[2](torch.relu(net.fusion.net[0](torch.cat([want_i, want_a], 1))))
        want_logits = fused @ net.classifier.weight.T + net.classifier.bias
    assert z_i.shape == (2, 256) and z_a.shape == (2, 256) and fused.shape == (2, 512) and logits.shape == (2, 7)
    torch.testing.assert_close(z_i, want_i, rtol=1e-4, atol=1e-5)
    torch.testing.assert_close(z_a, want_a, rtol=1e-4, atol=1e-5)
    torch.testing.assert_close(fused, want_fused, rtol=1e-4, atol=1e-5)
    torch.testing.assert_close(logits, want_logits, rtol=1e-4, atol=1e-5)


def test_teacher_gives_512_descriptor_and_logits():
    torch.manual_seed(0)
    net = r2plus1d_teacher(num_classes=5).eval()
    clip = torch.randint(0, 255, (1, 8, 48, 48, 3), dtype=torch.uint8)     # small: the network is size-agnostic
    with torch.inference_mode():
        z, logits = net(clip)
        mean, std = torch.tensor([0.43216, 0.394666, 0.37645]), torch.tensor([0.22803, 0.22145, 0.216989])
        x = torch.stack([(clip[..., c].float() / 255 - mean[c]) / std[c] for c in range(3)], 1)   # (B, 3, T, H, W)
        fmap = net.trunk[:5](x)                                  # stem .. layer4, before the pooling
        want = fmap.mean((2, 3, 4))                              # the descriptor: average over time and space
        want_logits = z @ net.fc.weight.T + net.fc.bias
    assert z.shape == (1, 512) and logits.shape == (1, 5)
    assert (fmap >= 0).all()                                     # post-ReLU, like torchvision's descriptor
    torch.testing.assert_close(z, want, rtol=1e-4, atol=1e-5)
    torch.testing.assert_close(logits, want_logits, rtol=1e-4, atol=1e-5)


def test_random_initialisation_is_seeded_and_recorded():
    a, rec_a = load_student("random", seed=3)
    b, rec_b = load_student("random", seed=3)
    c, rec_c = load_student("random", seed=4)
    assert rec_a["sha256"] == rec_b["sha256"] != rec_c["sha256"]
    assert rec_a["source"] == "random(seed=3)"


def test_offline_pretrained_request_warns_and_falls_back(monkeypatch, tmp_path):
    monkeypatch.setenv("TORCH_HOME", str(tmp_path))   # an empty cache; downloads are impossible here
    import torchvision.models.video as tvv

    def no_network(*a, **k):
        raise OSError("offline")
    monkeypatch.setattr(tvv.R2Plus1D_18_Weights.KINETICS400_V1.__class__, "get_state_dict", no_network)
    with pytest.warns(UserWarning, match="RANDOM initialisation"):
        _, rec = load_teacher("kinetics400", seed=1)
    assert rec["source"] == "random(seed=1)"


def test_checkpoint_files_load_with_their_hash(tmp_path):
    teacher = r2plus1d_teacher(num_classes=6)
    raw = {k.replace("trunk.0", "stem").replace("trunk.1", "layer1").replace("trunk.2", "layer2")
           .replace("trunk.3", "layer3").replace("trunk.4", "layer4"): v for k, v in teacher.state_dict().items()}
    torch.save(raw, tmp_path / "t.pth")             # torchvision key layout
    loaded, rec = load_teacher(str(tmp_path / "t.pth"))
    assert rec["num_classes"] == 6 and rec["sha256"] == state_hash(teacher)
    student = imgaud2vid_student(num_classes=3)
    torch.save({"state_dict": student.state_dict()}, tmp_path / "s.pth")
    _, rec = load_student(str(tmp_path / "s.pth"))
    assert rec["sha256"] == state_hash(student) and rec["source"].startswith("file:")


def test_bad_weight_files_are_clear_errors(tmp_path):
    with pytest.raises(WeightsError, match="not found"):
        load_teacher(str(tmp_path / "none.pth"))
    (tmp_path / "junk.pth").write_bytes(b"junk")
    with pytest.raises(WeightsError, match="cannot read"):
        load_student(str(tmp_path / "junk.pth"))


def test_audio_stream_takes_an_rgb_resnet_with_conv1_averaged_over_colours():
    from torchvision.models import resnet18

    from models.imgaud import AudioNet, audio_trunk_state
    torch.manual_seed(0)
    rgb = resnet18().state_dict()
    audio = AudioNet()
    audio.trunk.load_state_dict(audio_trunk_state(rgb))
    torch.testing.assert_close(audio.trunk[0].weight, rgb["conv1.weight"].mean(1, keepdim=True))
    torch.testing.assert_close(audio.trunk[7][1].conv2.weight, rgb["layer4.1.conv2.weight"])
    torch.testing.assert_close(audio.trunk[1].running_var, rgb["bn1.running_var"])
