"""The licences the models' makers publish, for the dataset card.

Kept as data, one entry per catalog model id, each with where it was read. A model missing
here has no licence its maker or Krea publishes that we know of, and the card says "licence
not published" for it: the models with open weights have one, the others are served under
their providers' terms of use, which are no model licence.
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True, slots=True)
class Licence:
    name: str  # as its maker writes it
    hub_id: str  # the Hub's ``license:`` value: one of its ids, or "other"
    link: str
    hub_name: str | None = None  # ``license_name:`` for "other"


FLUX_DEV = Licence(
    name="FLUX.1 [dev] Non-Commercial License (Black Forest Labs)",
    hub_id="other",
    hub_name="flux-1-dev-non-commercial-license",
    link="https://huggingface.co/black-forest-labs/FLUX.1-dev/blob/main/LICENSE.md",
)
APACHE_2 = Licence(
    name="Apache License 2.0",
    hub_id="apache-2.0",
    link="https://www.apache.org/licenses/LICENSE-2.0",
)

# model id → (licence, where it is published)
LICENCES: dict[str, tuple[Licence, str]] = {
    "flux-1-dev": (
        FLUX_DEV,
        "huggingface.co/black-forest-labs/FLUX.1-dev (model card, LICENSE.md)",
    ),
    "flux-1-kontext-dev": (
        FLUX_DEV,
        "huggingface.co/black-forest-labs/FLUX.1-Kontext-dev (model card: the FLUX.1 [dev] "
        "Non-Commercial License)",
    ),
    # Krea's "Qwen 2512" (alias qwen-image): Qwen-Image-2512, Apache 2.0 by the Qwen team.
    "qwen-2512": (APACHE_2, "huggingface.co/Qwen/Qwen-Image-2512 (model card: apache-2.0)"),
    # Krea's "Z Image" (alias z-image-turbo): Z-Image-Turbo, Apache 2.0 by Tongyi-MAI.
    "z-image": (APACHE_2, "huggingface.co/Tongyi-MAI/Z-Image-Turbo (model card: apache-2.0)"),
}

NOT_PUBLISHED = "licence not published"


def licence_of(model: str) -> Licence | None:
    entry = LICENCES.get(model)
    return None if entry is None else entry[0]


def one_licence(models: list[str]) -> Licence | None:
    """The licence that covers every model, if one does (none for a model without one)."""
    found = {licence_of(model) for model in models}
    if len(found) != 1:
        return None
    return found.pop()
