"""LST's side network (methods/petl/ladder.py): the BERT-like and OPT block families build their
side config the same way (one shared LayerFamily): the backbone's config at hidden_size / r, the
feed-forward width / r, the most heads ≤ the backbone's that divide the side width, every dropout
rate set to method.dropout, side blocks of the backbone's own layer type; a reduction that leaves
no width names method.reduction and the config's sizes."""

from __future__ import annotations

import pytest
import torch
from transformers import BertConfig, BertForSequenceClassification, OPTConfig, OPTForCausalLM

from sparse_ft.core.errors import ConfigError
from sparse_ft.methods.petl.ladder import BertFamily, OptFamily, family_for


def _bert():
    torch.manual_seed(0)
    cfg = BertConfig(vocab_size=50, hidden_size=48, num_hidden_layers=2, num_attention_heads=6, intermediate_size=96,
                     max_position_embeddings=16, num_labels=2)
    return BertForSequenceClassification(cfg)


def _opt():
    torch.manual_seed(0)
    cfg = OPTConfig(vocab_size=50, hidden_size=48, num_hidden_layers=2, num_attention_heads=6, ffn_dim=96,
                    max_position_embeddings=16, word_embed_proj_dim=48)
    return OPTForCausalLM(cfg)


@pytest.mark.parametrize("build, cls, ff_key, dropouts, layers", [
    (_bert, BertFamily, "intermediate_size", ("hidden_dropout_prob", "attention_probs_dropout_prob"),
     lambda m: m.bert.encoder.layer),
    (_opt, OptFamily, "ffn_dim", ("dropout", "attention_dropout"), lambda m: m.model.decoder.layers),
])
def test_bert_and_opt_side_configs_are_the_backbone_at_width_d_over_r(build, cls, ff_key, dropouts, layers):
    module = build()
    fam = family_for(module, 4, 0.25)
    assert type(fam) is cls
    side = fam.side_cfg
    assert side.hidden_size == 12 and getattr(side, ff_key) == 24
    assert side.num_attention_heads == 6  # 6 ≤ 6 heads and 12 % 6 == 0
    assert all(getattr(side, k) == 0.25 for k in dropouts)
    assert module.config.hidden_size == 48 and getattr(module.config, ff_key) == 96  # the backbone's own config untouched
    assert fam.width == 12 and fam.dims == {"model": 12, "inner": 12, "ff": 24}
    block = fam.make_block("encoder", 1, first=False)
    assert type(block) is type(layers(module)[0])
    assert fam.copied("encoder", True) == {}
    h = torch.randn(2, 5, 12)
    out = fam.run_block(block.eval(), h, {}, torch.zeros(2, 1, 5, 5))
    assert out.shape == (2, 5, 12)
    # heads: the most ≤ the backbone's 6 that divide 48 / 5 = 9 → 3
    assert family_for(module, 5, 0.1).side_cfg.num_attention_heads == 3


@pytest.mark.parametrize("build, sizes", [(_bert, "hidden 48, intermediate 96"), (_opt, "hidden 48, ffn 96")])
def test_a_reduction_that_leaves_no_width_names_the_key_and_the_sizes(build, sizes):
    with pytest.raises(ConfigError, match="method.reduction") as err:
        family_for(build(), 64, 0.1)
    assert f"64 leaves no width: {sizes}" in str(err.value)
