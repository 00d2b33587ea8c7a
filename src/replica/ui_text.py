"""The Sync screen's message catalog: every word the page shows, by language.

The field app ships several languages, so no label of the screen is written
anywhere else: ``replica.ui_screen`` asks :class:`Catalog` for each one by key,
with the figures as named placeholders (``{count}``, ``{device}``). English is
the default and the reference: every other language has exactly its keys and
placeholders (``tests/test_ui_screen.py`` checks it). A field app team adds a
language by adding one dictionary to :data:`CATALOGS`.

Which headline a status shows is not decided here: ``SyncStatus.headline``
decides it, and the catalog only words it (keys ``headline.*``). Messages of
errors (``ErrorInfo.message``) come from the library in English and are shown
as they are, with their stable code beside them.
"""

from __future__ import annotations

import string
from collections.abc import Mapping

DEFAULT = "en"

ENGLISH: dict[str, str] = {
    "app.title": "Home",
    "app.campaign": "Health campaign",
    "app.reconnecting": "Lost the link to this device's app server; reconnecting…",
    "login.button": "Log in",
    "login.out": "Log out",
    "login.as": "Logged in: {name}",
    "login.hint": "Logging in syncs the device, as each morning.",
    "headline.syncing": "Sync in Progress",
    "headline.failed": "Sync Failed",
    "headline.synced": "Data Synced",
    "headline.unsynced": "Data unsynced",
    "card.count": "Data unsynced: {count}",
    "card.last_synced": "Last synced at {time}",
    "card.never_synced": "Not synced yet",
    "card.connected": "Connected to the server",
    "card.rejected_title": "Refused by the server ({count})",
    "card.rejected_line": "{count} changes to {document}: {reason}",
    "sync.button": "Sync Data",
    "sync.no_relay": "No server address: start the app with --relay URL",
    "sync.live_note": "Live sync is on: changes go to the server as they are saved.",
    "live.label": "Live sync",
    "overlay.title": "Sync in Progress",
    "overlay.peer_title": "Syncing with {device}",
    "overlay.connecting": "Connecting…",
    "overlay.sent": "Sent {sent} of {to_send}",
    "overlay.received": "Received {received} of {to_receive}",
    "overlay.wait": "Please wait; do not close the app.",
    "popup.synced": "Data Synced",
    "popup.synced_body": "Everything on this device is safe on the server.",
    "popup.failed": "Sync Failed",
    "popup.more": "Sync finished",
    "popup.more_body": "Data unsynced: {count}. Changes saved during or since the sync go with the next one.",
    "popup.peer_synced": "Synced with {device}",
    "popup.peer_body": "Data unsynced: {count}. Changes reach the server at this device's next sync.",
    "popup.peer_failed": "Sync with {device} failed",
    "popup.code": "Code: {code}",
    "popup.retry_hint": "Retrying can help: check the connection, then press Retry.",
    "popup.no_retry_hint": "Retrying will not help. Show this message to your supervisor.",
    "popup.retry": "Retry",
    "popup.again": "Sync again",
    "popup.close": "Close",
    "peers.title": "Nearby devices",
    "peers.none": "No nearby device yet.",
    "peers.sync_with": "Sync with {device}",
    "peers.find": "Find nearby devices",
    "peers.state": "To send {to_send} · To receive {to_receive}",
    "peers.last": "Last synced at {time}",
    "peers.never": "Never synced",
    "peers.error": "Last sync failed: {message}",
    "form.title": "Register",
    "form.kind": "What",
    "form.kind.household": "Household",
    "form.kind.delivery": "Delivery",
    "form.area": "Area",
    "form.name.household": "Head of household",
    "form.name.delivery": "Household visited",
    "form.number.household": "Members",
    "form.number.delivery": "Bed nets given",
    "form.save": "Save",
    "form.saved": "Saved: {what} {name}",
    "error.title": "Not done",
}

FRENCH: dict[str, str] = {
    "app.title": "Accueil",
    "app.campaign": "Campagne de santé",
    "app.reconnecting": "Lien perdu avec le serveur de l'application ; reconnexion…",
    "login.button": "Se connecter",
    "login.out": "Se déconnecter",
    "login.as": "Connecté : {name}",
    "login.hint": "Se connecter synchronise l'appareil, comme chaque matin.",
    "headline.syncing": "Synchronisation en cours",
    "headline.failed": "Échec de la synchronisation",
    "headline.synced": "Données synchronisées",
    "headline.unsynced": "Données non synchronisées",
    "card.count": "Données non synchronisées : {count}",
    "card.last_synced": "Dernière synchronisation à {time}",
    "card.never_synced": "Pas encore synchronisé",
    "card.connected": "Connecté au serveur",
    "card.rejected_title": "Refusé par le serveur ({count})",
    "card.rejected_line": "{count} modifications de {document} : {reason}",
    "sync.button": "Synchroniser",
    "sync.no_relay": "Pas d'adresse de serveur : lancez l'application avec --relay URL",
    "sync.live_note": "La synchronisation continue est active : chaque modification part au serveur.",
    "live.label": "Synchronisation continue",
    "overlay.title": "Synchronisation en cours",
    "overlay.peer_title": "Synchronisation avec {device}",
    "overlay.connecting": "Connexion…",
    "overlay.sent": "Envoyé {sent} sur {to_send}",
    "overlay.received": "Reçu {received} sur {to_receive}",
    "overlay.wait": "Veuillez patienter ; ne fermez pas l'application.",
    "popup.synced": "Données synchronisées",
    "popup.synced_body": "Tout ce que contient cet appareil est en sécurité sur le serveur.",
    "popup.failed": "Échec de la synchronisation",
    "popup.more": "Synchronisation terminée",
    "popup.more_body": "Non synchronisées : {count}. Ce qui a été saisi depuis part avec la prochaine.",
    "popup.peer_synced": "Synchronisé avec {device}",
    "popup.peer_body": "Non synchronisées : {count}. Elles atteindront le serveur à la prochaine synchronisation.",
    "popup.peer_failed": "Échec de la synchronisation avec {device}",
    "popup.code": "Code : {code}",
    "popup.retry_hint": "Réessayer peut aider : vérifiez la connexion, puis appuyez sur Réessayer.",
    "popup.no_retry_hint": "Réessayer n'aidera pas. Montrez ce message à votre superviseur.",
    "popup.retry": "Réessayer",
    "popup.again": "Synchroniser encore",
    "popup.close": "Fermer",
    "peers.title": "Appareils à proximité",
    "peers.none": "Aucun appareil à proximité pour l'instant.",
    "peers.sync_with": "Synchroniser avec {device}",
    "peers.find": "Chercher des appareils",
    "peers.state": "À envoyer {to_send} · À recevoir {to_receive}",
    "peers.last": "Dernière synchronisation à {time}",
    "peers.never": "Jamais synchronisé",
    "peers.error": "Dernier échec : {message}",
    "form.title": "Enregistrer",
    "form.kind": "Quoi",
    "form.kind.household": "Ménage",
    "form.kind.delivery": "Distribution",
    "form.area": "Zone",
    "form.name.household": "Chef de ménage",
    "form.name.delivery": "Ménage visité",
    "form.number.household": "Membres",
    "form.number.delivery": "Moustiquaires données",
    "form.save": "Enregistrer",
    "form.saved": "Enregistré : {what} {name}",
    "error.title": "Non effectué",
}

#: Every language the screen speaks, by code.
CATALOGS: Mapping[str, Mapping[str, str]] = {"en": ENGLISH, "fr": FRENCH}


def placeholders(text: str) -> set[str]:
    """The named placeholders of a catalog entry (``{count}`` -> ``count``)."""
    return {name for _, name, _, _ in string.Formatter().parse(text) if name}


class Catalog:
    """The messages of one language; ``catalog.text("card.count", count=3)``."""

    def __init__(self, language: str = DEFAULT) -> None:
        if language not in CATALOGS:
            known = ", ".join(sorted(CATALOGS))
            raise ValueError(f"no messages in language {language!r}; the screen speaks {known}")
        self.language = language
        self.messages = CATALOGS[language]

    def text(self, key: str, **values: object) -> str:
        """The message ``key`` with its placeholders filled (a KeyError names a key that is missing)."""
        return self.messages[key].format(**values)

    def static(self) -> dict[str, str]:
        """The entries without placeholders (button and section labels), for the page to show as they are."""
        return {key: text for key, text in self.messages.items() if not placeholders(text)}
