"""torch.ops.consr (bindings/torch) from Python: values and gradients against torch autograd of the
same formulas, written here independently of consr -- log_softmax + gather (spec section 4),
-logsigmoid DPO (eq. 7) as TRL computes it, the ConSR surrogate with detach() (eq. 14), and the
diffusion noise with a plain-Python Philox4x32-10 + Box-Muller (spec section 3) -- plus
torch.autograd.gradcheck (finite differences) and bad input, which must raise RuntimeError naming the
argument. Gradients agree to 1e-6 in float64 and 1e-4 in float32.

Run by ctest (tests/torch/CMakeLists.txt) with the library path in CONSR_TORCH_OPS_LIBRARY, using a
Python whose torch matches the LibTorch the library was built against (Debian: /usr/bin/python3).
Plain unittest: no pytest needed.
"""
import itertools
import math
import os
import sys
import unittest

import torch

LIBRARY = os.environ.get("CONSR_TORCH_OPS_LIBRARY", "")


def setUpModule():
    if not LIBRARY or not os.path.exists(LIBRARY):
        raise RuntimeError("set CONSR_TORCH_OPS_LIBRARY to the path of libconsr_torch_ops.so (got %r)" % LIBRARY)
    torch.ops.load_library(LIBRARY)


def ops():
    return torch.ops.consr


def devices():
    """The CPU, plus CUDA when there is a GPU and the library has consr's CUDA kernels."""
    result = [torch.device("cpu")]
    if torch.cuda.is_available() and ops().has_cuda():
        result.append(torch.device("cuda"))
    return result


def max_abs_diff(a, b):
    if a.numel() == 0:
        return 0.0
    return (a.detach().double().cpu() - b.detach().double().cpu()).abs().max().item()


def reference_logprobs(logits, labels, temperature=1.0, ignore_index=-100):
    lsm = torch.log_softmax(logits.double() / temperature, dim=-1)
    keep = labels != ignore_index
    safe = labels.masked_fill(~keep, 0).long()
    picked = lsm.gather(-1, safe.unsqueeze(-1)).squeeze(-1)
    return torch.where(keep, picked, torch.zeros_like(picked))


def random_labels(shape, vocab, ignore_fraction=0.2, generator=None):
    labels = torch.randint(0, vocab, shape, generator=generator)
    drop = torch.rand(shape, generator=generator) < ignore_fraction
    return labels.masked_fill(drop, -100)


class TokenLogprobs(unittest.TestCase):
    def test_values_and_gradients(self):
        g = torch.Generator().manual_seed(1)
        for device, dtype, temperature in itertools.product(devices(), (torch.float64, torch.float32), (1.0, 0.7)):
            with self.subTest(device=str(device), dtype=str(dtype), temperature=temperature):
                tol = 1e-6 if dtype == torch.float64 else 1e-4
                logits = (torch.randn(11, 2100, generator=g, dtype=torch.float64) * 4).to(dtype).to(device)
                logits.requires_grad_(True)
                labels = random_labels((11,), 2100, generator=g).to(device)
                logp = ops().token_logprobs(logits, labels, temperature=temperature)
                self.assertEqual(logp.dtype, torch.float64 if dtype == torch.float64 else torch.float32)
                ref = reference_logprobs(logits, labels, temperature)
                self.assertLess(max_abs_diff(logp, ref), tol)
                upstream = torch.randn(11, generator=g, dtype=torch.float64).to(device)
                (grad,) = torch.autograd.grad(logp, logits, upstream.to(logp.dtype))
                (grad_ref,) = torch.autograd.grad(ref, logits, upstream)
                self.assertEqual(grad.dtype, dtype)
                self.assertLess(max_abs_diff(grad, grad_ref), tol)

    def test_causal_shift_of_batched_logits(self):
        # TRL: logits [B, L, V] of the model, labels [B, L]; the shift is the caller's (spec section 2).
        g = torch.Generator().manual_seed(2)
        for device in devices():
            logits = torch.randn(3, 7, 40, generator=g, dtype=torch.float64).to(device).requires_grad_(True)
            labels = random_labels((3, 7), 40, generator=g).to(device)
            logp = ops().token_logprobs(logits[:, :-1], labels[:, 1:])
            self.assertEqual(tuple(logp.shape), (3, 6))
            ref = reference_logprobs(logits[:, :-1], labels[:, 1:])
            self.assertLess(max_abs_diff(logp, ref), 1e-6)
            upstream = torch.randn(3, 6, generator=g, dtype=torch.float64).to(device)
            (grad,) = torch.autograd.grad(logp, logits, upstream)
            (grad_ref,) = torch.autograd.grad(ref, logits, upstream)
            self.assertLess(max_abs_diff(grad, grad_ref), 1e-6)
            self.assertEqual(grad[:, -1].abs().sum().item(), 0.0)

    def test_bfloat16_logits(self):
        g = torch.Generator().manual_seed(3)
        logits = (torch.randn(5, 300, generator=g) * 3).bfloat16().requires_grad_(True)
        labels = random_labels((5,), 300, generator=g)
        logp = ops().token_logprobs(logits, labels)
        self.assertEqual(logp.dtype, torch.float32)
        self.assertLess(max_abs_diff(logp, reference_logprobs(logits, labels)), 1e-5)
        (grad,) = torch.autograd.grad(logp.sum(), logits)
        self.assertEqual(grad.dtype, torch.bfloat16)

    def test_gradcheck(self):
        g = torch.Generator().manual_seed(4)
        logits = torch.randn(4, 9, generator=g, dtype=torch.float64, requires_grad=True)
        labels = random_labels((4,), 9, generator=g)
        self.assertTrue(torch.autograd.gradcheck(lambda x: ops().token_logprobs(x, labels, 0.8), (logits,)))

    def test_bad_input_names_the_argument(self):
        logits = torch.randn(4, 7)
        labels = torch.randint(0, 7, (4,))
        with self.assertRaisesRegex(RuntimeError, r"argument 'logits': has dtype int64 but must be float32"):
            ops().token_logprobs(logits.long(), labels)
        with self.assertRaisesRegex(RuntimeError, r"argument 'labels': has dtype float32 but must be int64 or int32"):
            ops().token_logprobs(logits, labels.float())
        with self.assertRaisesRegex(RuntimeError, r"argument 'labels': has shape \[3\] but logits \[4, 7\] need"):
            ops().token_logprobs(logits, labels[:3])
        bad = labels.clone()
        bad[1] = 7
        with self.assertRaisesRegex(RuntimeError, r"argument 'labels': labels\[1\] = 7 is outside \[0, 7\)"):
            ops().token_logprobs(logits, bad)
        with self.assertRaisesRegex(RuntimeError, r"argument 'labels': is on meta but 'logits' is on cpu"):
            ops().token_logprobs(logits, torch.empty(4, dtype=torch.long, device="meta"))
        with self.assertRaisesRegex(RuntimeError, r"argument 'temperature': must be finite and > 0"):
            ops().token_logprobs(logits, labels, temperature=-1.0)
        with self.assertRaisesRegex(RuntimeError, r"argument 'logits': the vocabulary \(last\) dimension has stride"):
            ops().token_logprobs(torch.randn(7, 4).t(), labels)


class LinearTokenLogprobs(unittest.TestCase):
    def test_values_and_gradients_against_materialized_logits(self):
        g = torch.Generator().manual_seed(9)
        for device, dtype in itertools.product(devices(), (torch.float64, torch.float32)):
            with self.subTest(device=str(device), dtype=str(dtype)):
                tol = 1e-6 if dtype == torch.float64 else 1e-4
                hidden = torch.randn(2, 5, 8, generator=g, dtype=torch.float64).to(dtype).to(device)
                weight = (torch.randn(30, 8, generator=g, dtype=torch.float64) * 0.5).to(dtype).to(device)
                bias = torch.randn(30, generator=g, dtype=torch.float64).to(dtype).to(device)
                for t in (hidden, weight, bias):
                    t.requires_grad_(True)
                labels = random_labels((2, 5), 30, generator=g).to(device)
                logp = ops().linear_token_logprobs(hidden[:, :-1], weight, bias, labels[:, 1:], vocab_chunk=7)
                logits = torch.nn.functional.linear(hidden[:, :-1].double(), weight.double(), bias.double())
                ref = reference_logprobs(logits, labels[:, 1:])
                self.assertLess(max_abs_diff(logp, ref), tol)
                upstream = torch.randn(2, 4, generator=g, dtype=torch.float64).to(device)
                grads = torch.autograd.grad(logp, (hidden, weight, bias), upstream.to(logp.dtype))
                ref_grads = torch.autograd.grad(ref, (hidden, weight, bias), upstream)
                for got, want in zip(grads, ref_grads):
                    self.assertEqual(got.dtype, dtype)
                    self.assertLess(max_abs_diff(got, want), tol)

    def test_gradcheck_without_bias_and_errors(self):
        g = torch.Generator().manual_seed(10)
        hidden = torch.randn(3, 4, generator=g, dtype=torch.float64, requires_grad=True)
        weight = torch.randn(6, 4, generator=g, dtype=torch.float64, requires_grad=True)
        labels = torch.tensor([0, 5, -100])
        self.assertTrue(torch.autograd.gradcheck(
            lambda h, w: ops().linear_token_logprobs(h, w, None, labels, vocab_chunk=4), (hidden, weight)))
        with self.assertRaisesRegex(RuntimeError, r"argument 'weight': has shape \[6, 3\] but must be \[V, 4\]"):
            ops().linear_token_logprobs(hidden, weight[:, :3], None, labels)
        with self.assertRaisesRegex(RuntimeError, r"argument 'labels': labels\[1\] = 6 is outside \[0, 6\)"):
            ops().linear_token_logprobs(hidden, weight, None, torch.tensor([0, 6, 1]))
        with self.assertRaisesRegex(RuntimeError, r"argument 'vocab_chunk': must be > 0"):
            ops().linear_token_logprobs(hidden, weight, None, labels, vocab_chunk=0)


def segment_sums(x, offsets):
    return torch.stack([x[offsets[s]:offsets[s + 1]].sum() for s in range(len(offsets) - 1)])


class Dpo(unittest.TestCase):
    def test_standard_dpo_as_trl_computes_it(self):
        # TRL: padded per-token log-probs [B, L] with a loss mask, reference log-probs summed per sequence,
        # logits = beta * ((pi_c - ref_c) - (pi_r - ref_r)), loss = -logsigmoid(logits).mean().
        g = torch.Generator().manual_seed(5)
        beta = 0.1
        policy_c = (torch.randn(3, 6, generator=g, dtype=torch.float64) - 2).requires_grad_(True)
        policy_r = (torch.randn(3, 6, generator=g, dtype=torch.float64) - 2).requires_grad_(True)
        labels_c = random_labels((3, 6), 50, 0.3, generator=g)
        labels_r = random_labels((3, 6), 50, 0.3, generator=g)
        labels_c[:, 0] = 1
        labels_r[:, 0] = 1
        ref_c = torch.randn(3, generator=g, dtype=torch.float64) - 8
        ref_r = torch.randn(3, generator=g, dtype=torch.float64) - 8
        loss, metrics = ops().dpo_loss(policy_c, policy_r, chosen_reference_logp_sum=ref_c,
                                       rejected_reference_logp_sum=ref_r, chosen_labels=labels_c,
                                       rejected_labels=labels_r, loss_type="standard", beta=beta)
        mask_c = (labels_c != -100).double()
        mask_r = (labels_r != -100).double()
        logits = beta * (((policy_c * mask_c).sum(1) - ref_c) - ((policy_r * mask_r).sum(1) - ref_r))
        ref_loss = -torch.nn.functional.logsigmoid(logits).mean()
        self.assertLess(abs(loss.item() - ref_loss.item()), 1e-12)
        names = ops().dpo_metric_names()
        self.assertEqual(names[0], "margin_logit")
        self.assertEqual(len(names), metrics.shape[1])
        self.assertLess(max_abs_diff(metrics[:, names.index("margin_logit")], logits), 1e-12)
        self.assertTrue(torch.equal(metrics[:, names.index("accuracy")], (logits > 0).double()))
        self.assertLess(max_abs_diff(metrics[:, names.index("dpo_loss")], -torch.nn.functional.logsigmoid(logits)), 1e-12)
        grads = torch.autograd.grad(loss, (policy_c, policy_r))
        ref_grads = torch.autograd.grad(ref_loss, (policy_c, policy_r))
        self.assertLess(max_abs_diff(grads[0], ref_grads[0]), 1e-6)
        self.assertLess(max_abs_diff(grads[1], ref_grads[1]), 1e-6)
        # Standard DPO is a true gradient: finite differences agree.
        self.assertTrue(torch.autograd.gradcheck(
            lambda a, b: ops().dpo_loss(a, b, chosen_reference_logp_sum=ref_c, rejected_reference_logp_sum=ref_r,
                                        chosen_labels=labels_c, rejected_labels=labels_r, loss_type="standard")[0],
            (policy_c, policy_r)))

    def test_every_option_against_eq7_and_eq14(self):
        g = torch.Generator().manual_seed(6)
        offsets_c, offsets_r = [0, 3, 4, 8], [0, 2, 6, 7]
        for dtype in (torch.float64, torch.float32):
            tol = 1e-6 if dtype == torch.float64 else 1e-4
            a = (torch.randn(8, generator=g, dtype=torch.float64) - 2).to(dtype).requires_grad_(True)
            b = (torch.randn(7, generator=g, dtype=torch.float64) - 2).to(dtype).requires_grad_(True)
            a_ref = (torch.randn(8, generator=g, dtype=torch.float64) - 2).to(dtype)
            b_ref = (torch.randn(7, generator=g, dtype=torch.float64) - 2).to(dtype)
            la = torch.randint(0, 9, (8,), generator=g)
            lb = torch.randint(0, 9, (7,), generator=g)
            la[0] = -100
            lb[3] = -100
            # Visual weights from two log-prob arrays (eqs. 12-13).
            clean_a, corrupt_a = torch.rand(8, generator=g).log(), torch.rand(8, generator=g).log()
            clean_b, corrupt_b = torch.rand(7, generator=g).log(), torch.rand(7, generator=g).log()
            wa = ops().visual_weights(clean_a.to(dtype), corrupt_a.to(dtype), "chosen")
            wb = ops().visual_weights(clean_b.to(dtype), corrupt_b.to(dtype), "rejected")
            # In float64 from the same inputs; float32 weights are rounded once (<= 6e-8 at 1).
            delta_a = (clean_a.to(dtype).double().exp() - corrupt_a.to(dtype).double().exp())
            delta_b = (clean_b.to(dtype).double().exp() - corrupt_b.to(dtype).double().exp())
            self.assertLess(max_abs_diff(wa, 1 + (0.5 * delta_a).clamp(0, 0.2)), 1e-7)
            self.assertLess(max_abs_diff(wb, 1 - (0.5 * delta_b).clamp(0, 0.2)), 1e-7)
            for loss_type, ln, vw, sbb, reduction in itertools.product(
                    ("standard", "consr"), (False, True), (False, True), (False, True), ("mean", "sum", "none")):
                with self.subTest(dtype=str(dtype), loss_type=loss_type, ln=ln, vw=vw, sbb=sbb, reduction=reduction):
                    beta = 0.2
                    loss, metrics = ops().dpo_loss(
                        a, b, chosen_offsets=torch.tensor(offsets_c), rejected_offsets=torch.tensor(offsets_r),
                        chosen_reference_logp=a_ref, rejected_reference_logp=b_ref, chosen_labels=la,
                        rejected_labels=lb, chosen_weights=wa, rejected_weights=wb, loss_type=loss_type, beta=beta,
                        length_normalize=ln, visual_weights=vw, scale_by_beta=sbb, reduction=reduction)
                    ma, mb = (la != -100).double(), (lb != -100).double()
                    a64, b64 = a.double(), b.double()
                    sw = segment_sums((a64 - a_ref.double()) * ma, offsets_c)
                    sl = segment_sums((b64 - b_ref.double()) * mb, offsets_r)
                    nw, nl = segment_sums(ma, offsets_c), segment_sums(mb, offsets_r)
                    consr = loss_type == "consr"
                    if consr and ln:
                        delta = (nw + nl) / 2 * (beta / nw * sw - beta / nl * sl)
                    else:
                        delta = beta * (sw - sl)
                    if consr:
                        oa = wa.double() if vw else torch.ones(8, dtype=torch.float64)
                        ob = wb.double() if vw else torch.ones(7, dtype=torch.float64)
                        per_pair = -torch.sigmoid(-delta).detach() * (
                            segment_sums(oa * a64 * ma, offsets_c) - segment_sums(ob * b64 * mb, offsets_r))
                        if sbb:
                            per_pair = per_pair * beta
                    else:
                        per_pair = -torch.nn.functional.logsigmoid(delta)
                    if reduction == "none":
                        ref_loss = per_pair
                        upstream = torch.randn(3, generator=g, dtype=torch.float64)
                    else:
                        ref_loss = per_pair.mean() if reduction == "mean" else per_pair.sum()
                        upstream = torch.tensor(0.6, dtype=torch.float64)
                    self.assertEqual(loss.dtype, dtype)
                    self.assertLess(max_abs_diff(loss, ref_loss), tol)
                    self.assertLess(max_abs_diff(metrics[:, 0], delta), tol)
                    self.assertLess(max_abs_diff(metrics[:, 7], per_pair), tol)
                    self.assertFalse(metrics.requires_grad)
                    grads = torch.autograd.grad(loss, (a, b), upstream.to(dtype))
                    ref_grads = torch.autograd.grad(ref_loss, (a, b), upstream)
                    self.assertLess(max_abs_diff(grads[0], ref_grads[0]), tol)
                    self.assertLess(max_abs_diff(grads[1], ref_grads[1]), tol)

    def test_cuda_equals_cpu(self):
        if torch.device("cuda") not in devices():
            self.skipTest("no CUDA device or no consr CUDA kernels in the library")
        g = torch.Generator().manual_seed(11)
        a = torch.randn(8, generator=g, dtype=torch.float64, requires_grad=True)
        b = torch.randn(7, generator=g, dtype=torch.float64, requires_grad=True)
        args = dict(chosen_offsets=torch.tensor([0, 3, 4, 8]), rejected_offsets=torch.tensor([0, 2, 6, 7]),
                    chosen_reference_logp=torch.randn(8, generator=g, dtype=torch.float64),
                    rejected_reference_logp=torch.randn(7, generator=g, dtype=torch.float64),
                    chosen_weights=1 + 0.1 * torch.rand(8, generator=g, dtype=torch.float64),
                    rejected_weights=1 - 0.1 * torch.rand(7, generator=g, dtype=torch.float64))
        for loss_type, reduction in itertools.product(("standard", "consr"), ("mean", "none")):
            with self.subTest(loss_type=loss_type, reduction=reduction):
                want_loss, want_metrics = ops().dpo_loss(a, b, loss_type=loss_type, reduction=reduction, **args)
                ac, bc = a.detach().cuda().requires_grad_(True), b.detach().cuda().requires_grad_(True)
                got_loss, got_metrics = ops().dpo_loss(ac, bc, loss_type=loss_type, reduction=reduction,
                                                       **{k: v.cuda() for k, v in args.items()})
                self.assertLess(max_abs_diff(got_loss, want_loss), 1e-12)
                self.assertLess(max_abs_diff(got_metrics, want_metrics), 1e-12)
                up = torch.ones_like(want_loss)
                want = torch.autograd.grad(want_loss, (a, b), up)
                got = torch.autograd.grad(got_loss, (ac, bc), up.cuda())
                self.assertLess(max_abs_diff(got[0], want[0]), 1e-12)
                self.assertLess(max_abs_diff(got[1], want[1]), 1e-12)

    def test_bad_input_names_the_argument(self):
        a = torch.randn(5, dtype=torch.float64, requires_grad=True)
        b = torch.randn(4, dtype=torch.float64, requires_grad=True)
        good = dict(chosen_offsets=torch.tensor([0, 3, 5]), rejected_offsets=torch.tensor([0, 2, 4]),
                    chosen_reference_logp=torch.randn(5, dtype=torch.float64),
                    rejected_reference_logp=torch.randn(4, dtype=torch.float64), visual_weights=False)
        ops().dpo_loss(a, b, **good)
        with self.assertRaisesRegex(RuntimeError, r"argument 'chosen_offsets': offsets\[2\] \(the end of the last "
                                                  r"segment\) is 4 but 'chosen_policy_logp' has 5 elements"):
            ops().dpo_loss(a, b, **dict(good, chosen_offsets=torch.tensor([0, 3, 4])))
        with self.assertRaisesRegex(RuntimeError, r"argument 'rejected_offsets': describes 1 pairs"):
            ops().dpo_loss(a, b, **dict(good, rejected_offsets=torch.tensor([0, 4])))
        with self.assertRaisesRegex(RuntimeError, r"argument 'rejected_labels': has shape \[3\]"):
            ops().dpo_loss(a, b, **dict(good, rejected_labels=torch.zeros(3, dtype=torch.long)))
        with self.assertRaisesRegex(RuntimeError, r"argument 'chosen_weights': has 0 elements but the consr loss"):
            ops().dpo_loss(a, b, **dict(good, visual_weights=True))
        with self.assertRaisesRegex(RuntimeError, r"argument 'rejected_reference_logp': is missing"):
            ops().dpo_loss(a, b, **dict(good, rejected_reference_logp=None))
        with self.assertRaisesRegex(RuntimeError, r"argument 'rejected_policy_logp': has dtype float32"):
            ops().dpo_loss(a, b.float(), **good)
        with self.assertRaisesRegex(RuntimeError, r"argument 'reduction': is \"avg\""):
            ops().dpo_loss(a, b, reduction="avg", **good)
        with self.assertRaisesRegex(RuntimeError, r"argument 'loss_type': is \"ipo\""):
            ops().dpo_loss(a, b, loss_type="ipo", **good)
        with self.assertRaisesRegex(RuntimeError, r"argument 'options.beta'"):
            ops().dpo_loss(a, b, beta=0.0, **good)
        labels = torch.tensor([1, 1, -100, -100])
        with self.assertRaisesRegex(RuntimeError, r"argument 'rejected': pair 1 has no scored token"):
            ops().dpo_loss(a, b, rejected_labels=labels, **good)
        with self.assertRaisesRegex(RuntimeError, r"argument 'side': is \"both\""):
            ops().visual_weights(a, a, "both")


# ---- diffusion noise: a plain-Python reference of spec section 3 --------------------------------------------

M32 = 0xFFFFFFFF


def philox4x32_10(counter, key):
    c0, c1, c2, c3 = counter
    k0, k1 = key
    for _ in range(10):
        p0 = 0xD2511F53 * c0
        p1 = 0xCD9E8D57 * c2
        c0, c1, c2, c3 = ((p1 >> 32) ^ c1 ^ k0) & M32, p1 & M32, ((p0 >> 32) ^ c3 ^ k1) & M32, p0 & M32
        k0 = (k0 + 0x9E3779B9) & M32
        k1 = (k1 + 0xBB67AE85) & M32
    return c0, c1, c2, c3


def reference_normal(seed, offset, i):
    """epsilon_i of spec section 3: Philox4x32-10 of counter (block, offset) under key seed, Box-Muller."""
    block = i // 4
    words = philox4x32_10((block & M32, block >> 32, offset & M32, offset >> 32), (seed & M32, seed >> 32))
    pair = (i % 4) // 2
    u = (words[2 * pair] + 0.5) / 2.0 ** 32
    angle = 2 * math.pi * (words[2 * pair + 1] + 0.5) / 2.0 ** 32
    radius = math.sqrt(-2 * math.log(u))
    return radius * (math.cos(angle) if i % 2 == 0 else math.sin(angle))


class Corruptions(unittest.TestCase):
    def test_noise_coefficients_match_the_spec_table(self):
        for step, a, b in ((0, 0.999989, 0.004726), (500, 0.863017, 0.505175), (800, 0.467014, 0.884250),
                           (999, 0.285042, 0.958515)):
            got_a, got_b = ops().diffusion_noise_coefficients(step)
            self.assertLess(abs(got_a - a), 1e-6)
            self.assertLess(abs(got_b - b), 1e-6)

    def test_noise_values_against_python_philox_and_gradient(self):
        g = torch.Generator().manual_seed(7)
        seed, offset = 2024, 3
        a, b = ops().diffusion_noise_coefficients(800)
        for device, dtype in itertools.product(devices(), (torch.float64, torch.float32)):
            with self.subTest(device=str(device), dtype=str(dtype)):
                image = torch.randn(2, 3, 4, 5, generator=g, dtype=torch.float64).to(dtype).to(device)
                image.requires_grad_(True)
                out = ops().add_diffusion_noise(image, seed, offset)
                eps = torch.tensor([reference_normal(seed, offset, i) for i in range(image.numel())],
                                   dtype=torch.float64).view(image.shape)
                expected = a * image.detach().double().cpu() + b * eps
                self.assertLess(max_abs_diff(out, expected), 1e-6 if dtype == torch.float64 else 1e-5)
                upstream = torch.randn(out.shape, generator=g, dtype=torch.float64).to(dtype).to(device)
                (grad,) = torch.autograd.grad(out, image, upstream)
                self.assertLess(max_abs_diff(grad, a * upstream.double()), 1e-6)
        # Same (seed, offset) -> same noise; element_offset continues the stream; gradcheck.
        image = torch.randn(4, 6, generator=g, dtype=torch.float64, requires_grad=True)
        whole = ops().add_diffusion_noise(image, 9, step=500, schedule="cosine")
        self.assertTrue(torch.equal(whole, ops().add_diffusion_noise(image, 9, step=500, schedule="cosine")))
        tail = ops().add_diffusion_noise(image[2:], 9, step=500, schedule="cosine", element_offset=12)
        self.assertTrue(torch.equal(whole[2:], tail))
        self.assertTrue(torch.autograd.gradcheck(lambda x: ops().add_diffusion_noise(x, 9, 1), (image,)))
        with self.assertRaisesRegex(RuntimeError, r"argument 'step': step 1000 outside \[0, 1000\)"):
            ops().add_diffusion_noise(image, 9, step=1000)
        with self.assertRaisesRegex(RuntimeError, r"argument 'schedule': is \"quadratic\""):
            ops().add_diffusion_noise(image, 9, schedule="quadratic")
        with self.assertRaisesRegex(RuntimeError, r"argument 'seed': must be >= 0"):
            ops().add_diffusion_noise(image, -1)
        with self.assertRaisesRegex(RuntimeError, r"argument 'image': has dtype int64"):
            ops().add_diffusion_noise(image.long(), 1)

    def test_patch_mask_mixup_and_crop(self):
        g = torch.Generator().manual_seed(8)
        for device in devices():
            image = torch.randn(2, 3, 10, 12, generator=g, dtype=torch.float64).to(device).requires_grad_(True)
            out = ops().random_patch_mask(image, 5, patch_size=4, probability=0.5, fill_value=-9.0)
            masked = (out == -9.0).cpu()
            self.assertTrue(bool(masked.any()) and not bool(masked.all()))
            # Whole patches, the same in every channel; other pixels copied.
            for bi in range(2):
                for py in range(0, 10, 4):
                    for px in range(0, 12, 4):
                        patch = masked[bi, :, py:py + 4, px:px + 4]
                        self.assertTrue(bool(patch.all()) or not bool(patch.any()))
            self.assertTrue(torch.equal(out.detach().cpu()[~masked], image.detach().cpu()[~masked]))
            upstream = torch.randn(out.shape, generator=g, dtype=torch.float64).to(device)
            (grad,) = torch.autograd.grad(out, image, upstream)
            self.assertTrue(torch.equal(grad.cpu(), upstream.cpu() * (~masked).double()))

            other = torch.randn(2, 3, 10, 12, generator=g, dtype=torch.float64).to(device).requires_grad_(True)
            mixed = ops().mixup(image, other, 0.25)
            self.assertLess(max_abs_diff(mixed, 0.25 * image + 0.75 * other), 1e-15)
            grads = torch.autograd.grad(mixed, (image, other), upstream)
            self.assertLess(max_abs_diff(grads[0], 0.25 * upstream), 1e-15)
            self.assertLess(max_abs_diff(grads[1], 0.75 * upstream), 1e-15)

            small = torch.randn(2, 2, 6, 7, generator=g, dtype=torch.float64).to(device).requires_grad_(True)
            cropped = ops().random_resized_crop(small, 11, image_offset=4)
            self.assertEqual(cropped.shape, small.shape)
            self.assertTrue(torch.equal(cropped, ops().random_resized_crop(small, 11, image_offset=4)))
            self.assertTrue(torch.autograd.gradcheck(lambda x: ops().random_resized_crop(x, 11, image_offset=4),
                                                     (small,)))
            self.assertTrue(torch.autograd.gradcheck(
                lambda x: ops().random_patch_mask(x, 3, patch_size=2), (small,)))
        x = torch.randn(3, 4)
        with self.assertRaisesRegex(RuntimeError, r"argument 'other': has shape \[4, 3\]"):
            ops().mixup(x, x.t(), 0.5)
        with self.assertRaisesRegex(RuntimeError, r"argument 'lambda': must be in \[0, 1\]"):
            ops().mixup(x, x, 2.0)
        with self.assertRaisesRegex(RuntimeError, r"argument 'image': has shape \[3, 4\] but must be \[C, H, W\]"):
            ops().random_patch_mask(x, 1)
        with self.assertRaisesRegex(RuntimeError, r"argument 'probability'"):
            ops().random_patch_mask(x.view(1, 3, 4), 1, probability=-0.5)


class DocumentationSnippet(unittest.TestCase):
    def test_python_block_of_docs_torch_md_runs(self):
        # docs/torch.md's Python block, run as written except for the library path.
        docs = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "..", "docs", "torch.md")
        with open(docs, encoding="utf-8") as f:
            text = f.read()
        block = text.split("```python\n", 1)[1].split("```", 1)[0]
        default_path = "build/default/bindings/torch/libconsr_torch_ops.so"
        self.assertIn(default_path, block)
        namespace = {}
        exec(compile(block.replace(default_path, LIBRARY), docs, "exec"), namespace)
        self.assertTrue(torch.isfinite(namespace["loss"]).item())
        self.assertIsNotNone(namespace["logits"].grad)
        self.assertEqual(tuple(namespace["metrics"].shape), (1, 8))


if __name__ == "__main__":
    result = unittest.main(exit=False, verbosity=2).result
    sys.exit(0 if result.wasSuccessful() else 1)
