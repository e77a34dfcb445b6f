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
  costs half a full product; on a GPU an exact flat faiss index is used instead), selected
  while each block is fresh (a top-k on the diagonal blocks, then only the entries below a
  row's running candidate bound); every candidate that could be among the true k nearest
  under a certified float32 error bound is re-ranked with exact distances.
* ball membership: one float32 GEMM per pair of sets serves both directions (precision and
  recall); one comparison pass per block and direction finds the few pairs near or inside a
  ball, and those whose margin lies within the certified bound are re-decided exactly.

The steps between the products are numpy passes on one core; the transposed half of each
block, the second ball direction and half of the re-ranking run on a helper thread
(``screening.helper_thread``) beside them, on disjoint rows, so results do not depend on it.

The bound: for float32 inputs centred by a common shift, |approx - exact| <=
``screen_eps(d) * (|x|^2 + |y|^2)`` holds for any summation order (gamma_d for the dot product and the
norms, plus input and combination rounding), with a safety factor.

Conventions: inclusive ``<=`` everywhere (torch-fidelity's precision/recall uses ``<=``; the
clovaai ``prdc`` package uses strict ``<`` for all four numbers, which makes copies at distance 0
miss when the radius is 0).
"""
