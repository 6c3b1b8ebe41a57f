"""SCPO critics inside TRL's GRPOTrainer (TRL >= 1.15, < 2; tested with 1.15.0).

Two ways in, both running the self-teacher pass with the trainer's own model (its LoRA adapter on):

1. `ScpoReward` -- a sequence-level critic as a TRL reward function, beside the verifier's:

       verifier, critic = VerifierReward(task, problems), ScpoReward("scpo-judge", task, problems)
       trainer = GRPOTrainer(model, reward_funcs=[verifier, critic], args=GRPOConfig(reward_weights=[1, 0.5], ...))
       critic.bind(trainer)   # TRL hands reward functions no model: the critic reads trainer.model

   TRL then sums r_i + w s_i and makes it group-relative, as scpo_lab's own trainer does. Sequence-level critics:
   scpo-divergence (s_i = the rollout's mean teacher-student signal), scpo-judge (the judge's score), scpo-irl
   (the discriminator's reward; the discriminator trains on each batch after scoring it), scpo-head with
   value.reward = "score" (V after the rollout).

2. `ScpoGRPOTrainer` -- a GRPOTrainer subclass for the dense (per-token) critics: after TRL has computed its group
   advantages A_i, the critic's advantages [B, T] (A_{i,t} = A_i + w s_{i,t} for scpo-divergence at token or span
   level) replace them. TRL 1.15's `_compute_loss` accepts (B, T) advantages, so the subclass only overrides
   `_generate_and_score_completions`. Limits: one process (TRL slices advantages per process after normalising over
   the gathered batch, and the critic needs each group whole); the value critic scpo-critic, whose own update
   needs the trainer's loop, is not supported.

The dataset: a conversational "prompt" column and a "problem_id" column naming a task problem (`problem_dataset`).

TRL 1.15 computes its training log-probs with a Triton-only kernel; on a machine without CUDA/XPU call
`patch_trl_for_cpu()` first (a plain-PyTorch equivalent, `CpuChunkedLogProb`).
"""

from __future__ import annotations

import torch

from scpo_lab.config import TrainConfig, make_config
from scpo_lab.critics import critic_class, make_critic, methods
from scpo_lab.models import Policy
from scpo_lab.padding import pad_token_lists
from scpo_lab.rollout import RolloutBatch, encode_prompts
from scpo_lab.teacher import student_messages, teacher_pass



def sequence_level_methods() -> tuple[str, ...]:
    """Methods whose critic's sequence_reward serves as a TRL reward function (ScpoReward)."""
    return tuple(m for m in methods() if critic_class(m) is not None and critic_class(m).sequence_level)


DENSE = ("scpo-divergence", "scpo-head")  # dense critics ScpoGRPOTrainer is tested with (their advantages [B, T])


# ------------------------------------------------------------------------------------------------ data

def problem_dataset(problems):
    """A datasets.Dataset for GRPOTrainer: "prompt" (chat messages) and "problem_id" per problem."""
    from datasets import Dataset

    return Dataset.from_dict({"prompt": [p.prompt for p in problems], "problem_id": [p.id for p in problems]})


class _ProblemLookup:
    def __init__(self, task, problems):
        self.task = task
        self.by_id = {p.id: p for p in problems}

    def problems(self, ids) -> list:
        missing = [i for i in ids if i not in self.by_id]
        if missing:
            raise KeyError(f"problem_id: {missing[0]!r} is not among the problems given to the reward function")
        return [self.by_id[i] for i in ids]


def _texts(completions) -> list[str]:
    return [c[-1]["content"] if isinstance(c, list) else c for c in completions]


class VerifierReward(_ProblemLookup):
    """The task's verifier as a TRL reward function: r_i = task.verify(problem, completion).reward."""

    __name__ = "verifier"

    def __call__(self, prompts, completions, problem_id, **kwargs) -> list[float]:
        return [v.reward for v in self.task.verify_batch(self.problems(problem_id), _texts(completions))]


# ------------------------------------------------------------------------------------------------ the critic side

class _CriticBridge(_ProblemLookup):
    """What both entry points share: scpo_lab's critic, a Policy view of the trainer's model, and a RolloutBatch
    built from TRL's tensors, verified by the task."""

    def __init__(self, method: str, task, problems, config: TrainConfig | None = None, **overrides):
        super().__init__(task, problems)
        self.config = config or make_config("cpu", method=method, task={"name": task.name, "options": {}},
                                            **overrides)
        if self.config.method != method:
            raise ValueError(f"method: {method!r} differs from config.method {self.config.method!r}")
        self.critic = None
        self.trainer = None

    def bind(self, trainer) -> "_CriticBridge":
        self.trainer = trainer
        return self

    def policy(self) -> Policy:
        if self.trainer is None:
            raise RuntimeError("trainer: call .bind(trainer) after building the GRPOTrainer (TRL gives reward "
                               "functions no model)")
        tokenizer = self.trainer.processing_class
        if self.critic is None:
            self.critic = make_critic(self.config.method, self.config, tokenizer)
        return Policy(model=self.trainer.model, tokenizer=tokenizer, backend="hf", name="trl",
                      device=self.trainer.accelerator.device)

    def batch(self, policy: Policy, problems, completion_ids, completion_mask=None) -> RolloutBatch:
        """Rollouts in TRL's order (each prompt's num_generations completions together), verified; for the
        divergence critic also the student's own log-probs (TRL does not hand over the sampler's: one more
        teacher-forced pass)."""
        tok = policy.tokenizer
        if completion_mask is None:  # lists of token ids -> right-padded tensors
            completion_ids, completion_mask = pad_token_lists(completion_ids, tok.pad_token_id, "cpu", left=False)
        completion_ids, completion_mask = completion_ids.to(policy.device), completion_mask.to(policy.device)
        prompt_ids, prompt_mask = encode_prompts(tok, [p.prompt for p in problems], policy.device)
        group = self.trainer.num_generations
        texts = tok.batch_decode(completion_ids * completion_mask + tok.pad_token_id * (1 - completion_mask),
                                 skip_special_tokens=True)
        n = len(problems)
        batch = RolloutBatch(prompt_ids=prompt_ids, prompt_mask=prompt_mask, completion_ids=completion_ids,
                             completion_mask=completion_mask, logprobs=torch.zeros(completion_ids.shape),
                             texts=texts, problems=list(problems), group_ids=torch.arange(n) // group,
                             truncated=torch.zeros(n, dtype=torch.bool), group_size=group)
        batch.verdicts = self.task.verify_batch(batch.problems, texts)
        if critic_class(self.config.method).reads_sampler_logprobs:
            batch.logprobs = teacher_pass(policy, batch, batch.verdicts, context=student_messages,
                                          micro_batch_size=self.config.micro_batch_size,
                                          engine=self.config.rollout_engine).logprobs
        return batch

    def critic_advantages(self, policy: Policy, batch: RolloutBatch, group_advantages: torch.Tensor):
        teacher = self.critic.teacher_pass(policy, batch, temperature=self.config.temperature,
                                           micro_batch_size=self.config.micro_batch_size)
        result = self.critic.advantages(batch, group_advantages, teacher)
        result.stats.update(self.critic.after_update(policy) or {})  # e.g. the discriminator's step on this batch
        return result


def _loggable(stats: dict) -> dict:
    """The finite numbers of a critic's statistics (TRL's logs take floats, and a nan would poison their means)."""
    return {k: float(v) for k, v in stats.items() if isinstance(v, (int, float)) and v == v}


class ScpoReward(_CriticBridge):
    """A sequence-level SCPO critic as a TRL reward function (see the module docstring)."""

    def __init__(self, method: str, task, problems, config: TrainConfig | None = None, **overrides):
        allowed = sequence_level_methods()
        if method not in allowed:
            raise ValueError(f"method: {method!r} has no sequence-level reward; allowed: {', '.join(allowed)}"
                             " (dense critics: ScpoGRPOTrainer)")
        super().__init__(method, task, problems, config, **overrides)
        critic_class(method).check_sequence_level(self.config)
        self.__name__ = method  # TRL logs rewards/<__name__>/mean
        self.last_stats: dict = {}

    def __call__(self, prompts, completions, completion_ids, problem_id, **kwargs) -> list[float]:
        policy = self.policy()
        model = policy.model
        was_training = model.training
        batch = self.batch(policy, self.problems(problem_id), completion_ids)
        result = self.critic_advantages(policy, batch, torch.zeros(len(batch)))
        self.last_stats = result.stats
        model.train(was_training)
        log_metric = kwargs.get("log_metric")
        if log_metric is not None:
            for key, value in _loggable(self.last_stats).items():
                log_metric(f"{self.__name__}/{key}", value)
        return [float(x) for x in result.sequence_reward]


def scpo_grpo_trainer_class():
    """ScpoGRPOTrainer, built on first use so that importing scpo_lab never imports TRL."""
    from trl import GRPOTrainer

    class ScpoGRPOTrainer(GRPOTrainer):
        """GRPOTrainer whose advantages come from a dense SCPO critic: A_{i,t} = A_i + w s_{i,t} (module docstring).

        scpo_critic: a _CriticBridge for a method in DENSE (`ScpoGRPOTrainer.critic_for(method, task, problems)`).
        """

        def __init__(self, *args, scpo_critic: _CriticBridge, **kwargs):
            super().__init__(*args, **kwargs)
            if scpo_critic.config.method not in DENSE:
                raise ValueError(f"scpo_critic: method {scpo_critic.config.method!r}; allowed: {', '.join(DENSE)}")
            if self.accelerator.num_processes != 1:
                raise ValueError("ScpoGRPOTrainer: one process only (the critic needs whole groups; TRL slices "
                                 "advantages per process); use ScpoReward under multi-process training")
            self.scpo = scpo_critic.bind(self)

        @staticmethod
        def critic_for(method: str, task, problems, config: TrainConfig | None = None, **overrides):
            return _CriticBridge(method, task, problems, config, **overrides)

        def _generate_and_score_completions(self, inputs):
            output = super()._generate_and_score_completions(inputs)
            if not self.model.training:
                return output
            policy = self.scpo.policy()
            problems = self.scpo.problems([x["problem_id"] for x in inputs])
            batch = self.scpo.batch(policy, problems, output["completion_ids"], output["completion_mask"])
            result = self.scpo.critic_advantages(policy, batch, output["advantages"].float().cpu())
            advantages, stats = result.advantages, result.stats
            self.model.train()
            if advantages.dim() == 1:
                advantages = advantages[:, None].expand(-1, batch.completion_ids.shape[1])
            output["advantages"] = advantages.to(output["advantages"].device)  # [B, T]
            for key, value in _loggable(stats).items():
                self._metrics["train"][key].append(value)
            return output

    return ScpoGRPOTrainer


# ------------------------------------------------------------------------------------------------ CPU support

class CpuChunkedLogProb:
    """CPU stand-in for TRL's `_ChunkedLogProbFunction` (trl/kernels/chunked_logprob.py).

    TRL 1.15's GRPOTrainer always computes the training log-probs through that function (its `add_fused_lm_head`
    patch of the model's forward), and its forward/backward launch Triton kernels with no CPU path: on a CPU-only
    host the first loss computation dies with "RuntimeError: 0 active drivers ([]). There should only be one."
    This computes the same outputs (log-prob of each target token and the entropy, of softmax(z / temperature) with
    z = logit_scale * (h W^T + b), optionally soft-capped) in plain PyTorch, `TOKENS_PER_CHUNK` tokens at a time,
    each chunk under a non-reentrant checkpoint so the backward recomputes its logits instead of storing them:
    the same strategy as TRL's kernel (recompute in backward) and as scpo_lab's `completion_logprobs`.
    """

    TOKENS_PER_CHUNK = 1024  # scpo_lab: 64 positions x 16 rows

    @staticmethod
    def apply(hidden, weight, bias, targets, temperature, chunk_size, final_logit_softcapping=None,
              logit_scale=1.0, outputs=("log_probs",)):
        import torch.nn.functional as F
        from torch.utils.checkpoint import checkpoint

        extra = set(outputs) - {"log_probs", "entropy"}
        if extra:
            raise NotImplementedError(f"CpuChunkedLogProb: outputs {sorted(extra)} are not implemented")
        want_entropy = "entropy" in outputs

        def piece(h, t):
            z = F.linear(h, weight, bias).float() * logit_scale
            if final_logit_softcapping is not None:
                z = final_logit_softcapping * torch.tanh(z / final_logit_softcapping)
            logp_all = F.log_softmax(z / temperature, dim=-1)
            logp = logp_all.gather(-1, t.unsqueeze(-1)).squeeze(-1)
            if not want_entropy:
                return (logp,)
            return logp, -(logp_all.exp() * logp_all).sum(-1)

        n = hidden.shape[0]
        if n == 0:
            empty = hidden.sum(-1).float() * 0.0  # shape [0], still connected to the graph
            return empty, (empty if want_entropy else None), None, None, None
        grad = torch.is_grad_enabled()
        step = CpuChunkedLogProb.TOKENS_PER_CHUNK
        parts = [checkpoint(piece, hidden[s:s + step], targets[s:s + step], use_reentrant=False) if grad
                 else piece(hidden[s:s + step], targets[s:s + step]) for s in range(0, n, step)]
        logp = torch.cat([p[0] for p in parts])
        entropy = torch.cat([p[1] for p in parts]) if want_entropy else None
        return logp, entropy, None, None, None


def patch_trl_for_cpu() -> bool:
    """Route TRL's fused LM-head log-probs through CpuChunkedLogProb when there is no CUDA/XPU. True if patched."""
    import trl.trainer.utils as trl_utils

    has_gpu = torch.cuda.is_available() or (hasattr(torch, "xpu") and torch.xpu.is_available())
    if has_gpu or not hasattr(trl_utils, "_ChunkedLogProbFunction"):
        return False
    trl_utils._ChunkedLogProbFunction = CpuChunkedLogProb  # looked up as a module global at each call
    return True


__all__ = ["CpuChunkedLogProb", "ScpoReward", "VerifierReward", "patch_trl_for_cpu", "problem_dataset",
           "scpo_grpo_trainer_class"]
