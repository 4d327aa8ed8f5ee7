"""The text reference model: topics of a short document (multilabel), from its tokens and metadata.

Two named inputs, so forward takes them by name: `tokens` (int64 ids [N, 32], 0 = padding)
are embedded and mean-pooled over the real tokens, a bag of words that suits topic tagging;
`meta` (length in words, links, hour posted [N, 3]) is scaled by constants written here, so
serving sends the raw columns. The output is one logit per topic; a topic is predicted
where its logit is above 0.
"""

import torch
from torch import nn

VOCAB = 1000
EMBED = 32
TOPICS = 5


class TopicTagger(nn.Module):
    def __init__(self):
        super().__init__()
        self.embed = nn.Embedding(VOCAB, EMBED, padding_idx=0)
        self.head = nn.Sequential(nn.Linear(EMBED + 3, 64), nn.ReLU(), nn.Linear(64, TOPICS))

    def forward(self, tokens: torch.Tensor, meta: torch.Tensor) -> torch.Tensor:
        # where(), not .float(): the FP16 variant's converter leaves a Cast to float32 that ORT then refuses
        real = torch.where(tokens != 0, 1.0, 0.0).unsqueeze(-1)
        pooled = (self.embed(tokens) * real).sum(1) / real.sum(1).clamp_min(1.0)
        length, links, hour = meta.unbind(1)
        scaled = torch.stack([torch.log1p(length.clamp_min(0.0)) / 4.0, links / 4.0, hour / 24.0], 1)
        return self.head(torch.cat([pooled, scaled], 1))


def build_model() -> nn.Module:
    return TopicTagger()


if __name__ == "__main__":
    print(build_model()(tokens=torch.zeros(2, 32, dtype=torch.long), meta=torch.zeros(2, 3)).shape)
