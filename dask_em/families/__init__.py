"""Component families: one NumPy-only module per distribution, found by name here."""

from dask_em.families._family import Family
from dask_em.families import bayesian_gaussian, bernoulli, categorical, gaussian, kmeans, poisson

FAMILIES = {
    **{fam.name: fam for fam in gaussian.FAMILIES.values()},
    **{fam.name: fam for fam in bayesian_gaussian.FAMILIES.values()},
    kmeans.FAMILY.name: kmeans.FAMILY,
    bernoulli.FAMILY.name: bernoulli.FAMILY,
    poisson.FAMILY.name: poisson.FAMILY,
    categorical.FAMILY.name: categorical.FAMILY,
}


def get_family(name: str) -> Family:
    """Return the registered :class:`Family` called ``name``.

    Raises
    ------
    ValueError
        If no family has that name; the message lists the known names.
    """
    try:
        return FAMILIES[name]
    except KeyError:
        known = ", ".join(sorted(FAMILIES))
        raise ValueError(f"Unknown family {name!r}; known families are: {known}.") from None


__all__ = ["FAMILIES", "Family", "get_family"]
