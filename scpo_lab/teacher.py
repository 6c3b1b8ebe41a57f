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
from scpo_lab.rollout import RolloutBatch, encode_prompts

# The grader's note appended to the question in the teacher's context. Kept in one place so every critic and
# baseline that builds a privileged context reads the same words.
GRADER_NOTE = (
    "\n\n[Grader's note, visible only to you: an automatic checker has already graded the answer that follows. "
    "Verdict: {outcome}. {feedback}]"
)


def privileged_messages(prompt: list[dict], verdict) -> list[dict]:
    """The problem's chat prompt with the verifier's outcome and feedback added to the last user turn."""
    note = GRADER_NOTE.format(outcome="correct" if verdict.passed else "incorrect", feedback=verdict.feedback)
    messages = [dict(m) for m in prompt]
    last_user = max(i for i, m in enumerate(messages) if m["role"] == "user")
    messages[last_user]["content"] = messages[last_user]["content"] + note
    return messages


@dataclass
class TeacherOutput:
    logprobs: torch.Tensor  # [B, T] log pi(y_t | x, c, y_<t), 0 where masked
    prompt_tokens: int  # privileged-context tokens read (for FLOP and cost accounting)


@torch.no_grad()
def teacher_pass(policy, batch: RolloutBatch, verdicts, *, temperature: float = 1.0,
                 micro_batch_size: int = 16) -> TeacherOutput:
    """Teacher-forced forward of the policy (adapter on: the live policy) over privileged context + rollout."""
    messages = [privileged_messages(p.prompt, v) for p, v in zip(batch.problems, verdicts)]
    was_training = policy.model.training
    policy.model.eval()
    out, prompt_tokens = [], 0
    for start in range(0, len(batch), micro_batch_size):
        rows = slice(start, start + micro_batch_size)
        ids, mask = encode_prompts(policy.tokenizer, messages[rows], policy.device)
        prompt_tokens += int(mask.sum())
        logp, _ = completion_logprobs(policy.model, ids, mask, batch.completion_ids[rows],
                                      batch.completion_mask[rows], temperature=temperature, with_entropy=False)
        out.append(logp)
    policy.model.train(was_training)
    return TeacherOutput(logprobs=torch.cat(out), prompt_tokens=prompt_tokens)
