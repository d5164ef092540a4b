"""Device-side diff apply: integer semantics, hashes, the xxh64 kernel."""
from __future__ import annotations

import numpy as np
import pytest
import xxhash

from device_agent.diff import Diff, HashedDelta, SparseDelta, apply_diff, dense_delta
from device_agent.errors import DiffError, WrongBaseError
from device_agent.hashing import buckets_and_signs, tensor_seed, xxh64_u64
from tests.tiny import tiny_device_model


def test_vectorised_xxh64_is_bit_exact_with_the_xxhash_package() -> None:
    rng = np.random.default_rng(7)
    values = np.concatenate([rng.integers(0, 2**63, 3000, dtype=np.uint64),
                             np.array([0, 1, 2**63, 2**64 - 1], dtype=np.uint64)])
    for seed in (0, 1, 12345, 2**64 - 1, int(rng.integers(0, 2**63))):
        want = [xxhash.xxh64_intdigest(int(v).to_bytes(8, "little"), seed=seed) for v in values]
        assert xxh64_u64(values, seed).tolist() == want


def test_bucket_and_sign_follow_the_documented_rule() -> None:
    positions = np.arange(1000)
    bucket, sign = buckets_and_signs(positions, 3, "encoder.weight_hh_l0", 17)
    seed = tensor_seed(3, "encoder.weight_hh_l0")
    for p in (0, 1, 500, 999):
        h = xxhash.xxh64_intdigest(int(p).to_bytes(8, "little"), seed=seed)
        assert bucket[p] == h % 17 and sign[p] == (-1 if h >> 63 else 1)
    assert set(np.unique(bucket)) == set(range(17)) and set(np.unique(sign)) == {-1, 1}


def _sparse_diff(base, target_hash: str = "") -> Diff:
    name = "encoder.weight_hh_l0"
    return Diff("sparse", base.model_id, 1, 2, base.content_hash(), target_hash,
                {name: SparseDelta(np.array([0, 5, 9]), np.array([3, -127, 100], dtype=np.int8))})


def test_sparse_apply_is_clamped_integer_addition() -> None:
    base = tiny_device_model()
    name = "encoder.weight_hh_l0"
    base.weights[name].q.reshape(-1)[[0, 5, 9]] = [0, -100, 100]
    diff = _sparse_diff(base)
    result = apply_diff(base, diff, check_hashes=False)
    assert result.weights[name].q.reshape(-1)[[0, 5, 9]].tolist() == [3, -127, 127]
    assert base.weights[name].q.reshape(-1)[0] == 0, "base must not change"
    assert result.version == 2
    np.testing.assert_array_equal(result.weights[name].scale, base.weights[name].scale)


def test_hashed_apply_touches_only_nonzero_entries() -> None:
    base = tiny_device_model()
    name = "joint.out.weight"
    diff = Diff("hashed", base.model_id, 1, 2, base.content_hash(), "", {name: HashedDelta(4, [1, -2, 3, 5])}, seed=9)
    result = apply_diff(base, diff, check_hashes=False)
    before, after = base.weights[name].q, result.weights[name].q
    assert np.all(after[before == 0] == 0), "hashed diffs preserve sparsity"
    assert np.any(after != before)
    delta = dense_delta(name, diff.deltas[name], base.weights[name], 9).reshape(before.shape)
    np.testing.assert_array_equal(after, np.clip(before.astype(np.int16) + delta, -127, 127))


def test_hash_checks_protect_both_ends() -> None:
    base = tiny_device_model()
    good_target = apply_diff(base, _sparse_diff(base), check_hashes=False).content_hash()
    assert apply_diff(base, _sparse_diff(base, good_target)).content_hash() == good_target
    with pytest.raises(DiffError, match="expected target"):
        apply_diff(base, _sparse_diff(base, "f" * 32))
    other = tiny_device_model(seed=1)
    with pytest.raises(WrongBaseError, match="diff expects base model"):
        apply_diff(other, _sparse_diff(base, good_target))


@pytest.mark.parametrize("delta,match", [
    (SparseDelta([5, 5], [1, 1]), "strictly increasing"),
    (SparseDelta([10**9], [1]), "strictly increasing within"),
    (SparseDelta([1], [0]), "nonzero"),
    (SparseDelta([1], [-128]), "nonzero and within"),
    (HashedDelta(3, [1, 2]), "expected 3 buckets"),
])
def test_malformed_deltas_are_refused(delta, match: str) -> None:
    base = tiny_device_model()
    diff = Diff("x", base.model_id, 1, 2, base.content_hash(), "", {"joint.out.weight": delta})
    with pytest.raises(DiffError, match=match):
        apply_diff(base, diff, check_hashes=False)


def test_unknown_tensor_is_refused() -> None:
    base = tiny_device_model()
    diff = Diff("x", base.model_id, 1, 2, base.content_hash(), "", {"nope": SparseDelta([1], [1])})
    with pytest.raises(DiffError, match="does not have"):
        apply_diff(base, diff, check_hashes=False)


def test_in_place_apply_gives_the_same_model() -> None:
    base = tiny_device_model()
    diff = _sparse_diff(base)
    diff.target_hash = apply_diff(base, diff, check_hashes=False).content_hash()
    hashed = Diff("hashed", base.model_id, 1, 2, base.content_hash(), "", {"joint.out.weight": HashedDelta(3, [1, -1, 2])},
                  seed=4)
    hashed.target_hash = apply_diff(base, hashed, check_hashes=False).content_hash()
    for d in (diff, hashed):
        scratch = tiny_device_model()
        assert apply_diff(scratch, d, in_place=True).content_hash() == d.target_hash
