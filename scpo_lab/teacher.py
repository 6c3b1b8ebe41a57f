"""The self-teacher pass: the same policy re-reads its own rollout with privileged context.

Privileged context c_i for rollout i = the original question + the verifier's outcome and feedback on this very
rollout. The rollout itself is then re-read, token for token, as the assistant's answer:

    teacher input  = chat(user: question + "\n\n" + grader note(verdict_i)) + assistant: y_i
    student input  = chat(user: question)                                  + assistant: y_i

and the pass returns log pi(y_{i,t} | x, c_i, y_{i,<t}) for every completion token, aligned with the student's
log pi(y_{i,t} | x, y_{i,<t}). No gradient flows through it: it is an evaluator, not an imitation target.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from scpo_lab.objective import completion_logprobs
from scpo_lab.rollout import RolloutBatch

# The grader's note appended to the question in the teacher's context. Kept in one place so every critic and
# baseline that builds a privileged context reads the same words.
# The verdict's feedback names the outcome and puts what all rollouts of a problem share first ("The expected
# answer is 42. Your final answer 40 is wrong."), so the contexts of a group differ only in a short tail.
GRADER_NOTE = (
    "\n\n[Grader's note, visible only to you: an automatic checker has already graded the answer that follows. "
    "{feedback}]"
)


def privileged_messages(prompt: list[dict], verdict) -> list[dict]:
    """The problem's chat prompt with the verifier's outcome and feedback added to the last user turn."""
    note = GRADER_NOTE.format(feedback=verdict.feedback)
    messages = [dict(m) for m in prompt]
    last_user = max(i for i, m in enumerate(messages) if m["role"] == "user")
    messages[last_user]["content"] = messages[last_user]["content"] + note
    return messages


@dataclass
class TeacherOutput:
    logprobs: torch.Tensor  # [B, T] log pi(y_t | x, c, y_<t), 0 where masked
    tokens_read: int  # tokens the teacher forward processed (shared prefixes once), for FLOP accounting


@torch.no_grad()
def teacher_pass(policy, batch: RolloutBatch, verdicts, *, temperature: float = 1.0,
                 micro_batch_size: int = 16) -> TeacherOutput:
    """Teacher-forced forward of the policy (adapter on: the live policy) over privileged context + rollout.

    Cost: the teacher contexts of one group differ only after the question (each rollout has its own verdict),
    so the longest common token prefix of a group's contexts runs once per group (its KV cache shared by the G
    rows, as in the update) and each row reads only its own suffix and completion.
    """
    tok = policy.tokenizer
    texts = [tok.apply_chat_template(privileged_messages(p.prompt, v), tokenize=False, add_generation_prompt=True)
             for p, v in zip(batch.problems, verdicts)]
    contexts = [tok(t, add_special_tokens=False)["input_ids"] for t in texts]
    G = batch.group_size
    rows_per_chunk = max(G, micro_batch_size // G * G)  # whole groups per forward
    was_training = policy.model.training
    policy.model.eval()
    out, read_tokens = [], 0
    for start in range(0, len(batch), rows_per_chunk):
        rows = range(start, min(start + rows_per_chunk, len(batch)))
        logp, n = _teacher_chunk(policy, [contexts[r] for r in rows], batch.completion_ids[rows.start:rows.stop],
                                 batch.completion_mask[rows.start:rows.stop], G, temperature)
        out.append(logp)
        read_tokens += n
    policy.model.train(was_training)
    return TeacherOutput(logprobs=torch.cat(out), tokens_read=read_tokens)


def _common_prefix_length(sequences: list[list[int]]) -> int:
    n = min(len(s) for s in sequences)
    for i in range(n):
        if any(s[i] != sequences[0][i] for s in sequences[1:]):
            return i
    return n


def _teacher_chunk(policy, contexts, completion_ids, completion_mask, G, temperature):
    """Log-probs of the completion tokens after each row's context, sharing each group's common prefix."""
    device, pad = policy.device, policy.tokenizer.pad_token_id
    full_width = completion_ids.shape[1]
    T = max(1, int(completion_mask.sum(1).max()))  # trim padding columns: they cost as much as real tokens
    completion_ids, completion_mask = completion_ids[:, :T], completion_mask[:, :T]
    B = completion_ids.shape[0]
    groups = [contexts[g:g + G] for g in range(0, B, G)] if B % G == 0 else [[c] for c in contexts]
    G = len(groups[0])
    # keep >= 1 suffix token per row so the suffix+completion layout below is uniform
    cut = [min(_common_prefix_length(grp), min(len(c) for c in grp) - 1) for grp in groups]
    prefixes = [grp[0][:k] for grp, k in zip(groups, cut)]
    suffixes = [c[k:] for grp, k in zip(groups, cut) for c in grp]
    lengths = completion_mask.sum(1).tolist()
    P = max(len(p) for p in prefixes)
    S = max(len(s) for s in suffixes)
    prefix_ids = torch.full((len(groups), P), pad, dtype=torch.long)
    prefix_mask = torch.zeros((len(groups), P), dtype=torch.long)
    for g, p in enumerate(prefixes):  # left padded
        prefix_ids[g, P - len(p):] = torch.tensor(p, dtype=torch.long)
        prefix_mask[g, P - len(p):] = 1
    body_ids = torch.full((B, S + T), pad, dtype=torch.long)
    body_mask = torch.zeros((B, S + T), dtype=torch.long)
    for r, (suffix, n) in enumerate(zip(suffixes, lengths)):  # right padded: suffix_r then completion_r
        body_ids[r, :len(suffix)] = torch.tensor(suffix, dtype=torch.long)
        body_ids[r, len(suffix):len(suffix) + n] = completion_ids[r, :n].cpu()
        body_mask[r, :len(suffix) + n] = 1
    # score only the completion part of each row: body positions len(suffix_r) .. len(suffix_r) + T - 1
    offsets = torch.tensor([len(s) for s in suffixes], device=device)[:, None] + torch.arange(T, device=device)
    logp, _ = completion_logprobs(policy.model, prefix_ids.repeat_interleave(G, 0).to(device),
                                  prefix_mask.repeat_interleave(G, 0).to(device), body_ids.to(device),
                                  body_mask.to(device), temperature=temperature, with_entropy=False, group_size=G,
                                  score_positions=offsets)
    logp = logp * completion_mask
    read = int(prefix_mask.sum()) + int(body_mask.sum())
    return torch.nn.functional.pad(logp, (0, full_width - T)), read
