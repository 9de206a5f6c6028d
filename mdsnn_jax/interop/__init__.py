"""Exchange with the neuromorphic ecosystem (needs the `[interop]` extra: nir, snntorch, torch).

    from mdsnn_jax.interop.nir import to_nir, from_nir
    graph = to_nir(model, variables, images)          # nir.NIRGraph; nir.write('m.nir', graph)
    model2, variables2 = from_nir(graph)              # a Flax model running the graph

The submodule imports `nir` only when used, so `mdsnn_jax` itself does not depend on it.
"""
