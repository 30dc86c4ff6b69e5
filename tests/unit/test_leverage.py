"""The leverage benchmark's solve metrics against the hat matrix computed directly (float64)."""
from __future__ import annotations

import pytest
import torch
from script_loader import load_script


@pytest.fixture(scope="module")
def leverage():
    return load_script("benchmarks/malmen_leverage.py")


def test_self_cross_and_reach_follow_the_hat_matrix(leverage):
    gen = torch.Generator().manual_seed(0)
    d, ridge = 6, 0.5
    owner = torch.tensor([0, 0, 1, 2, 2, 3])  # rows of four facts
    K = torch.randn(len(owner), d, generator=gen, dtype=torch.float64)
    para, para_owner = torch.randn(3, d, generator=gen, dtype=torch.float64), torch.tensor([0, 1, 3])
    loc, loc_owner = torch.randn(4, d, generator=gen, dtype=torch.float64), torch.tensor([0, 0, 1, 2])
    relations = ["a", "a", "b", "a"]
    out = leverage.measure((K, owner), (para, para_owner), {"ans": (loc, loc_owner)}, n=3, n_eval=2,
                           ridge=ridge, relations=relations)

    rows = owner < 3
    Kn, on = K[rows], owner[rows]
    H = Kn @ torch.linalg.solve(Kn.T @ Kn + ridge * torch.eye(d, dtype=torch.float64), torch.eye(d, dtype=torch.float64))
    evaluated = torch.nonzero(on < 2).flatten()
    hat = H @ Kn.T  # hat[j, i] = weight of row j's value difference on row i's output
    assert out["self"] == pytest.approx(float(hat.diagonal()[evaluated].mean()), rel=1e-9)
    cross = [float((hat[:, i].pow(2).sum() - hat[i, i] ** 2).sqrt()) for i in evaluated]
    assert out["cross"] == pytest.approx(sum(cross) / len(cross), rel=1e-9)
    W_p = H @ para[para_owner < 2].T
    own = [float(W_p[on == o, j].sum()) for j, o in enumerate(para_owner[para_owner < 2].tolist())]
    assert out["para_own"] == pytest.approx(sum(own) / len(own), rel=1e-9)
    W_l = (H @ loc[loc_owner < 2].T).pow(2).sum(0).sqrt()
    per_prompt = [max(float(W_l[0]), float(W_l[1])), float(W_l[2])]
    assert out["loc_reach_ans"] == pytest.approx(sum(per_prompt) / 2, rel=1e-9)
    # facts 0 and 1 share relation "a"; fact 2 ("b") shares with neither
    def share(i):
        mine = relations[int(on[i])]
        other = [j for j in range(len(on)) if on[j] != on[i]]
        same = [j for j in other if relations[int(on[j])] == mine]
        return float(sum(hat[j, i] ** 2 for j in same) / sum(hat[j, i] ** 2 for j in other))

    shares = [share(int(i)) for i in evaluated]
    assert shares[0] > 0 and shares[-1] > 0
    assert out["same_relation_share"] == pytest.approx(sum(shares) / len(shares), rel=1e-9)


@pytest.mark.parametrize("rows, d", [(5, 9), (9, 5)])  # fewer rows than dimensions (dual form) and more
def test_leverage_equals_the_hat_matrix_in_either_form(leverage, rows, d):
    gen = torch.Generator().manual_seed(1)
    K = torch.randn(rows, d, generator=gen, dtype=torch.float64)
    P = torch.randn(3, d, generator=gen, dtype=torch.float64)
    (W,) = leverage.leverage(K, 0.3, [P])
    expected = K @ torch.linalg.solve(K.T @ K + 0.3 * torch.eye(d, dtype=torch.float64), P.T)
    torch.testing.assert_close(W, expected, rtol=1e-9, atol=1e-12)


def test_the_joint_key_is_the_modules_keys_side_by_side(leverage):
    keys = leverage._with_joint({"a": torch.arange(6.0).reshape(3, 2), "b": -torch.arange(9.0).reshape(3, 3)},
                                {"a+b": ["a", "b"]})
    assert keys["a+b"].shape == (3, 5)
    torch.testing.assert_close(keys["a+b"][:, :2], keys["a"])
    torch.testing.assert_close(keys["a+b"][:, 2:], keys["b"])


@pytest.mark.parametrize("rows", [4, 9])  # fewer rows than key dimensions (dual solve) and more
def test_whitened_keys_give_the_covariance_ridge_weights(leverage, rows):
    """``K W`` and ``P W`` with the identity ridge r give ``K (K^T K + r C)^-1 P^T``, C scaled to mean
    eigenvalue 1, as the covariance ridge's solve would."""
    gen = torch.Generator().manual_seed(1)
    d, r = 6, 0.7
    A = torch.randn(d, d, generator=gen, dtype=torch.float64)
    C = A @ A.T + 0.1 * torch.eye(d, dtype=torch.float64)
    K = torch.randn(rows, d, generator=gen, dtype=torch.float64)
    P = torch.randn(3, d, generator=gen, dtype=torch.float64)
    W = leverage.whitening(C)
    (got,) = leverage.leverage(K @ W, r, [P @ W])
    scaled = C * d / C.trace()
    expected = K @ torch.linalg.solve(K.T @ K + r * scaled, P.T)
    torch.testing.assert_close(got, expected, rtol=1e-9, atol=1e-12)


def test_leverage_curves_group_by_dataset_ridge_and_solve_and_sort_by_reach():
    curves = load_script("research/malmen_leverage_curves.py").curves

    def record(dataset, layers, ridge, reach, own):
        out = {"dataset": dataset, "n_edits": 1024, "layers": layers, "metrics": {"loc_reach_ans": reach, "self": own}}
        return out if ridge is None else out | {"ridge": ridge}

    lines = curves([record("cf", "24-29", None, .5, .3), record("cf", "24-29", "identity", .2, .1),
                    record("cf", "24-29 joint", "covariance", .9, .7), record("zsre", "24-29 joint", "identity", .4, .2)])
    assert lines == {("cf", 1024, "identity ridge, per module"): [(.2, .1), (.5, .3)],
                     ("cf", 1024, "covariance ridge, joint"): [(.9, .7)],
                     ("zsre", 1024, "identity ridge, joint"): [(.4, .2)]}
