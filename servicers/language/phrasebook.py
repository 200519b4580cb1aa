"""The built-in phrasebook: short game phrases in six languages, the base of the translation memory.

Each row gives one phrase in every language it has; Translate may use any row from any of its
languages into any other (en -> fr, de -> pt, ...). Entries stored in the KV translation memory
take precedence over these for the same normalised source text. Rows are matched whole (an
exact or fuzzy translation-memory match) and phrase by phrase inside longer texts (a FALLBACK
translation), so single words here ("gold", "sword") help longer texts too.
"""

from __future__ import annotations

__all__ = ["LANGUAGES", "PHRASES"]

LANGUAGES = ("en", "fr", "de", "es", "pt", "it")

# Columns in the order of LANGUAGES.
_ROWS: tuple[tuple[str, str, str, str, str, str], ...] = (
    ("hello", "bonjour", "hallo", "hola", "olá", "ciao"),
    ("good morning", "bonjour", "guten Morgen", "buenos días", "bom dia", "buongiorno"),
    ("good evening", "bonsoir", "guten Abend", "buenas noches", "boa noite", "buonasera"),
    ("goodbye", "au revoir", "auf Wiedersehen", "adiós", "adeus", "arrivederci"),
    ("thank you", "merci", "danke", "gracias", "obrigado", "grazie"),
    ("thank you very much", "merci beaucoup", "vielen Dank", "muchas gracias", "muito obrigado", "grazie mille"),
    ("please", "s'il vous plaît", "bitte", "por favor", "por favor", "per favore"),
    ("yes", "oui", "ja", "sí", "sim", "sì"),
    ("no", "non", "nein", "no", "não", "no"),
    ("welcome", "bienvenue", "willkommen", "bienvenido", "bem-vindo", "benvenuto"),
    ("welcome, traveller", "bienvenue, voyageur", "willkommen, Reisender", "bienvenido, viajero",
     "bem-vindo, viajante", "benvenuto, viaggiatore"),
    ("friend", "ami", "Freund", "amigo", "amigo", "amico"),
    ("follow me", "suivez-moi", "folge mir", "sígueme", "segue-me", "seguimi"),
    ("be careful", "faites attention", "sei vorsichtig", "ten cuidado", "tem cuidado", "fai attenzione"),
    ("help", "à l'aide", "Hilfe", "ayuda", "socorro", "aiuto"),
    ("quest completed", "quête terminée", "Aufgabe abgeschlossen", "misión completada", "missão concluída",
     "missione completata"),
    ("new quest", "nouvelle quête", "neue Aufgabe", "nueva misión", "nova missão", "nuova missione"),
    ("quest failed", "quête échouée", "Aufgabe fehlgeschlagen", "misión fallida", "missão falhada",
     "missione fallita"),
    ("level up", "niveau supérieur", "Stufenaufstieg", "subida de nivel", "subida de nível", "livello superiore"),
    ("inventory full", "inventaire plein", "Inventar voll", "inventario lleno", "inventário cheio",
     "inventario pieno"),
    ("not enough gold", "pas assez d'or", "nicht genug Gold", "no hay suficiente oro", "ouro insuficiente",
     "oro insufficiente"),
    ("where is the inn?", "où est l'auberge ?", "wo ist das Gasthaus?", "¿dónde está la posada?",
     "onde fica a estalagem?", "dov'è la locanda?"),
    ("I need a healing potion", "j'ai besoin d'une potion de soin", "ich brauche einen Heiltrank",
     "necesito una poción curativa", "preciso de uma poção de cura", "ho bisogno di una pozione curativa"),
    ("the dragon", "le dragon", "der Drache", "el dragón", "o dragão", "il drago"),
    ("the sword", "l'épée", "das Schwert", "la espada", "a espada", "la spada"),
    ("the shield", "le bouclier", "der Schild", "el escudo", "o escudo", "lo scudo"),
    ("the king", "le roi", "der König", "el rey", "o rei", "il re"),
    ("the queen", "la reine", "die Königin", "la reina", "a rainha", "la regina"),
    ("the village", "le village", "das Dorf", "la aldea", "a aldeia", "il villaggio"),
    ("the forest", "la forêt", "der Wald", "el bosque", "a floresta", "la foresta"),
    ("the castle", "le château", "die Burg", "el castillo", "o castelo", "il castello"),
    ("the merchant", "le marchand", "der Händler", "el mercader", "o mercador", "il mercante"),
    ("the enemy", "l'ennemi", "der Feind", "el enemigo", "o inimigo", "il nemico"),
    ("gold", "or", "Gold", "oro", "ouro", "oro"),
    ("sword", "épée", "Schwert", "espada", "espada", "spada"),
    ("potion", "potion", "Trank", "poción", "poção", "pozione"),
    ("save game", "sauvegarder la partie", "Spiel speichern", "guardar partida", "guardar jogo", "salva partita"),
    ("load game", "charger la partie", "Spiel laden", "cargar partida", "carregar jogo", "carica partita"),
    ("game over", "partie terminée", "Spiel vorbei", "fin del juego", "fim de jogo", "fine del gioco"),
    ("victory", "victoire", "Sieg", "victoria", "vitória", "vittoria"),
    ("defeat", "défaite", "Niederlage", "derrota", "derrota", "sconfitta"),
    ("good luck", "bonne chance", "viel Glück", "buena suerte", "boa sorte", "buona fortuna"),
    ("see you soon", "à bientôt", "bis bald", "hasta pronto", "até breve", "a presto"),
    ("how much does it cost?", "combien ça coûte ?", "wie viel kostet das?", "¿cuánto cuesta?", "quanto custa?",
     "quanto costa?"),
    ("I am lost", "je suis perdu", "ich habe mich verirrt", "estoy perdido", "estou perdido", "mi sono perso"),
    ("open the door", "ouvrez la porte", "öffne die Tür", "abre la puerta", "abre a porta", "apri la porta"),
    ("the door is locked", "la porte est verrouillée", "die Tür ist verschlossen",
     "la puerta está cerrada con llave", "a porta está trancada", "la porta è chiusa a chiave"),
)

PHRASES: tuple[dict[str, str], ...] = tuple(dict(zip(LANGUAGES, row, strict=True)) for row in _ROWS)
