"""Reward-model loss."""

import torch
import torch.nn.functional as F


def bradley_terry(chosen_scores: torch.Tensor, rejected_scores: torch.Tensor, margin: float = 0.0) -> torch.Tensor:
    """Bradley–Terry (Ouyang et al. 2022, Eq. 1): −log σ(r_w − r_l − m), per pair (B,).

    With m > 0, a pair counts as learned only once chosen beats rejected by the margin (Llama 2's margin loss).
    """
    return -F.logsigmoid(chosen_scores - rejected_scores - margin)
