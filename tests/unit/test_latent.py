"""KNN on latents, scores on hand-made cases, nested PCA/Isomap embeddings."""

import numpy as np
import pytest
from sklearn.neighbors import KNeighborsClassifier

from medgen import latent


def test_one_neighbour_search_serves_every_k_like_sklearn():
    rng = np.random.default_rng(0)
    z_fit, z_eval = rng.normal(size=(80, 4)), rng.normal(size=(30, 4))
    y_fit = rng.integers(0, 2, size=80)
    labels = latent.neighbour_labels(z_fit, y_fit, z_eval, k_max=15)
    assert labels.shape == (30, 15)
    for k in (1, 4, 7, 15):
        ours = latent.knn_proba(labels, k, n_classes=2)
        reference = KNeighborsClassifier(n_neighbors=k).fit(z_fit, y_fit)
        np.testing.assert_allclose(ours, reference.predict_proba(z_eval))
        np.testing.assert_array_equal(ours.argmax(1), reference.predict(z_eval))


def test_scores_on_a_hand_made_case():
    y = np.array([0, 0, 0, 1])
    proba = np.array([[0.9, 0.1], [0.6, 0.4], [0.3, 0.7], [0.2, 0.8]])  # one class-0 error
    s = latent.scores(y, proba)
    assert s["acc"] == pytest.approx(0.75)
    assert s["balanced_acc"] == pytest.approx((2 / 3 + 1) / 2)
    assert s["auc"] == pytest.approx(1.0)  # the ranking is perfect even though one label is wrong
    assert np.isnan(latent.scores(np.array([0, 0]), proba[:2])["auc"])


@pytest.mark.parametrize("method", ["pca", "isomap"])
def test_embeddings_are_nested_so_one_fit_serves_every_latent_dim(method):
    rng = np.random.default_rng(1)
    x = rng.normal(size=(60, 20))
    big = latent.fit_embedding(method, x, 8, seed=0, isomap_subset=50)(x)
    small = latent.fit_embedding(method, x, 3, seed=0, isomap_subset=50)(x)
    assert big.shape == (60, 8) and small.shape == (60, 3)
    np.testing.assert_allclose(np.abs(big[:, :3]), np.abs(small), atol=1e-6)  # equal up to sign


def test_folds_are_stratified_and_cover_everything():
    y = np.array([0] * 30 + [1] * 70)
    fold_list = latent.folds(y, 5, seed=0)
    assert sorted(np.concatenate([b for _, b in fold_list]).tolist()) == list(range(100))
    assert all(y[b].sum() == 14 for _, b in fold_list)
