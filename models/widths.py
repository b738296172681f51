"""The descriptor widths the models produce, importable without torch (``fs info`` must not pay for importing it)."""
IMAGE_DIM = 256          # z^I, the image ResNet-18's descriptor
AUDIO_DIM = 256          # z^A, the audio ResNet-18's descriptor
FUSED_DIM = 512          # Psi(z^I, z^A), the estimate of the clip descriptor z^V
DESCRIPTOR_DIM = 512     # z^V, the pooled R(2+1)D-18 feature
MAP_SIZE = 4             # H_G = W_G: the image ResNet-18's layer4 map on a 112 x 112 frame (AVGN's e^G_t, not pooled)
MAP_DIM = 512            # D_G: channels of that map
