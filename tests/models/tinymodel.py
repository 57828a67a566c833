"""Config overrides for the tiny models the model tests build (imported by tests/models/test_*.py)."""

# A 16 px image in 4 px patches through a 1-layer ViT of width 16, pooled to 4 image tokens.
TINY_ENCODER = [
    "model.encoder.image_size=16",
    "model.encoder.patch_size=4",
    "model.encoder.hidden_size=16",
    "model.encoder.num_layers=1",
    "model.encoder.num_attention_heads=2",
    "model.encoder.ffn_hidden_size=32",
    "model.connector.num_tokens=4",
]


def tiny_decoder(layers: int, hidden: int, heads: int, seq_length: int) -> list[str]:
    """A decoder of ``layers`` x ``hidden`` (MLP 2 x hidden) over ``seq_length`` tokens."""
    return [
        f"model.decoder.num_layers={layers}",
        f"model.decoder.hidden_size={hidden}",
        f"model.decoder.num_attention_heads={heads}",
        f"model.decoder.ffn_hidden_size={2 * hidden}",
        f"model.decoder.seq_length={seq_length}",
    ]
