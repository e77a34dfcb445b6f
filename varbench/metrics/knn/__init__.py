"""The one exact k-NN room (an engine): every neighbour-based metric imports it; it imports no metric.

Modules by section: ``screening`` (exact distances, the float32 form and its bound),
``neighbours`` (k-NN within a set), ``balls`` (membership between sets), ``cross`` (queries
against another set), ``streamed`` (bases too large for memory).

A point is inside the manifold of a set if its distance to some member is <= that member's
distance to its k-th nearest neighbour (self excluded by index, so duplicates are neighbours).
Every decision equals the one made with exact float64 direct-difference distances
(``exact_sq_dists``; identical rows give exactly 0, so copies always count):

* k-NN radii: float32 candidates come from the self-distance matrix computed one block pair
  at a time over its upper triangle (each product serves the rows of both blocks, so a set
  costs half a full product; on a GPU an exact flat faiss index is used instead); every
  candidate that could be among the true k nearest under a certified float32 error bound is
  re-ranked with exact distances.
* ball membership: one float32 GEMM per pair of sets serves both directions (precision and
  recall); pairs whose margin lies within the certified bound are re-decided exactly.

The bound: for float32 inputs centred by a common shift, |approx - exact| <=
``screen_eps(d) * (|x|^2 + |y|^2)`` holds for any summation order (gamma_d for the dot product and the
norms, plus input and combination rounding), with a safety factor.

Conventions: inclusive ``<=`` everywhere (torch-fidelity's precision/recall uses ``<=``; the
clovaai ``prdc`` package uses strict ``<`` for all four numbers, which makes copies at distance 0
miss when the radius is 0).
"""
