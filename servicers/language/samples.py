# ruff: noqa: RUF001 - the Russian sample is written in Cyrillic on purpose.
"""Sample texts from which Detect builds its character n-gram profiles, one entry per language.

Each language has the same two paragraphs (a piece of lore and everyday game talk), written for
this module, so that the profiles differ by language and not by subject. A language is
supported by Detect exactly when it has a sample here; more text makes the profiles sharper.
"""

from __future__ import annotations

__all__ = ["SAMPLES"]

SAMPLES: dict[str, str] = {
    "en": (
        "The old road to the northern village winds through a dark forest where wolves hunt at night. "
        "Travellers say that a dragon sleeps beneath the mountain, guarding a treasure of gold and silver. "
        "The innkeeper offers a warm meal and a bed for the night, but she warns every guest to lock the door. "
        "In the morning the merchants open their stalls in the market square, selling bread, cheese, fresh fish "
        "and healing potions. A young knight has asked the king for permission to follow the river to its "
        "source, because nobody who went there has ever come back. The weather is changing: heavy rain is "
        "expected this evening, and the wind will be strong along the coast. Would you like to accept this "
        "quest? Your reward will be one hundred gold coins and the gratitude of the people.\n"
        "Hello, friend! Welcome to our town. Thank you for your help yesterday. Where is the nearest shop? "
        "I am looking for my brother, who left home three days ago and has not returned. Please be careful "
        "on the bridge, it is very old. Save your game before you leave the city. The battle begins at dawn, "
        "so get some rest and eat something."
    ),
    "fr": (
        "La vieille route qui mène au village du nord traverse une forêt sombre où les loups chassent la nuit. "
        "Les voyageurs disent qu'un dragon dort sous la montagne et garde un trésor d'or et d'argent. "
        "L'aubergiste propose un repas chaud et un lit pour la nuit, mais elle conseille à chaque client de "
        "fermer sa porte à clé. Le matin, les marchands ouvrent leurs étals sur la place du marché et vendent "
        "du pain, du fromage, du poisson frais et des potions de soin. Un jeune chevalier a demandé au roi la "
        "permission de suivre la rivière jusqu'à sa source, parce que personne n'en est jamais revenu. "
        "Le temps change : une forte pluie est attendue ce soir et le vent soufflera fort le long de la côte. "
        "Voulez-vous accepter cette quête ? Votre récompense sera de cent pièces d'or et la reconnaissance "
        "du peuple.\n"
        "Bonjour, mon ami ! Bienvenue dans notre ville. Merci pour ton aide d'hier. Où se trouve la boutique "
        "la plus proche ? Je cherche mon frère, qui est parti de la maison il y a trois jours et n'est pas "
        "revenu. Fais attention sur le pont, il est très vieux. Sauvegarde ta partie avant de quitter la "
        "ville. La bataille commence à l'aube, alors repose-toi et mange quelque chose."
    ),
    "de": (
        "Die alte Straße zum Dorf im Norden führt durch einen dunklen Wald, in dem nachts die Wölfe jagen. "
        "Reisende erzählen, dass unter dem Berg ein Drache schläft und einen Schatz aus Gold und Silber "
        "bewacht. Die Wirtin bietet eine warme Mahlzeit und ein Bett für die Nacht an, aber sie warnt jeden "
        "Gast, die Tür abzuschließen. Am Morgen öffnen die Händler ihre Stände auf dem Marktplatz und "
        "verkaufen Brot, Käse, frischen Fisch und Heiltränke. Ein junger Ritter hat den König um die "
        "Erlaubnis gebeten, dem Fluss bis zu seiner Quelle zu folgen, weil noch niemand von dort "
        "zurückgekehrt ist. Das Wetter ändert sich: Heute Abend wird starker Regen erwartet, und an der "
        "Küste weht ein kräftiger Wind. Möchtest du diese Aufgabe annehmen? Deine Belohnung sind hundert "
        "Goldmünzen und die Dankbarkeit des Volkes.\n"
        "Hallo, mein Freund! Willkommen in unserer Stadt. Danke für deine Hilfe gestern. Wo ist der nächste "
        "Laden? Ich suche meinen Bruder, der vor drei Tagen das Haus verlassen hat und nicht zurückgekommen "
        "ist. Sei bitte vorsichtig auf der Brücke, sie ist sehr alt. Speichere dein Spiel, bevor du die "
        "Stadt verlässt. Die Schlacht beginnt im Morgengrauen, also ruh dich aus und iss etwas."
    ),
    "es": (
        "El viejo camino hacia la aldea del norte atraviesa un bosque oscuro donde los lobos cazan por la "
        "noche. Los viajeros dicen que un dragón duerme bajo la montaña y protege un tesoro de oro y plata. "
        "La posadera ofrece una comida caliente y una cama para pasar la noche, pero advierte a cada huésped "
        "que cierre la puerta con llave. Por la mañana, los comerciantes abren sus puestos en la plaza del "
        "mercado y venden pan, queso, pescado fresco y pociones curativas. Un joven caballero le ha pedido "
        "al rey permiso para seguir el río hasta su nacimiento, porque nadie que haya ido allí ha vuelto "
        "jamás. El tiempo está cambiando: se espera una lluvia fuerte esta noche y el viento soplará con "
        "fuerza a lo largo de la costa. ¿Quieres aceptar esta misión? Tu recompensa serán cien monedas de "
        "oro y la gratitud del pueblo.\n"
        "¡Hola, amigo! Bienvenido a nuestra ciudad. Gracias por tu ayuda de ayer. ¿Dónde está la tienda más "
        "cercana? Estoy buscando a mi hermano, que se fue de casa hace tres días y no ha vuelto. Ten cuidado "
        "en el puente, es muy viejo. Guarda tu partida antes de salir de la ciudad. La batalla empieza al "
        "amanecer, así que descansa y come algo."
    ),
    "pt": (
        "A velha estrada para a aldeia do norte atravessa uma floresta escura onde os lobos caçam durante a "
        "noite. Os viajantes dizem que um dragão dorme debaixo da montanha e guarda um tesouro de ouro e "
        "prata. A estalajadeira oferece uma refeição quente e uma cama para passar a noite, mas avisa cada "
        "hóspede que tranque a porta. De manhã, os mercadores abrem as suas bancas na praça do mercado e "
        "vendem pão, queijo, peixe fresco e poções de cura. Um jovem cavaleiro pediu ao rei autorização "
        "para seguir o rio até à nascente, porque ninguém que lá foi voltou. O tempo está a mudar: "
        "espera-se chuva forte esta noite e o vento vai soprar com força ao longo da costa. Queres aceitar "
        "esta missão? A tua recompensa serão cem moedas de ouro e a gratidão do povo.\n"
        "Olá, amigo! Bem-vindo à nossa cidade. Obrigado pela tua ajuda de ontem. Onde fica a loja mais "
        "próxima? Estou à procura do meu irmão, que saiu de casa há três dias e ainda não voltou. Tem "
        "cuidado na ponte, ela é muito velha. Guarda o teu jogo antes de saíres da cidade. A batalha começa "
        "ao amanhecer, por isso descansa e come alguma coisa. Você também pode falar com o ferreiro, ele "
        "não cobra muito pelo seu trabalho."
    ),
    "it": (
        "La vecchia strada verso il villaggio del nord attraversa una foresta oscura dove i lupi cacciano "
        "di notte. I viaggiatori raccontano che un drago dorme sotto la montagna e custodisce un tesoro "
        "d'oro e d'argento. La locandiera offre un pasto caldo e un letto per la notte, ma avverte ogni "
        "ospite di chiudere la porta a chiave. Al mattino i mercanti aprono le loro bancarelle nella piazza "
        "del mercato e vendono pane, formaggio, pesce fresco e pozioni curative. Un giovane cavaliere ha "
        "chiesto al re il permesso di seguire il fiume fino alla sorgente, perché nessuno di quelli che ci "
        "sono andati è mai tornato. Il tempo sta cambiando: stasera è prevista una forte pioggia e il vento "
        "soffierà forte lungo la costa. Vuoi accettare questa missione? La tua ricompensa sarà di cento "
        "monete d'oro e la gratitudine del popolo.\n"
        "Ciao, amico! Benvenuto nella nostra città. Grazie per il tuo aiuto di ieri. Dov'è il negozio più "
        "vicino? Sto cercando mio fratello, che è partito da casa tre giorni fa e non è ancora tornato. "
        "Fai attenzione sul ponte, è molto vecchio. Salva la partita prima di lasciare la città. La "
        "battaglia inizia all'alba, quindi riposati e mangia qualcosa."
    ),
    "nl": (
        "De oude weg naar het dorp in het noorden loopt door een donker bos waar 's nachts de wolven jagen. "
        "Reizigers zeggen dat er onder de berg een draak slaapt die een schat van goud en zilver bewaakt. "
        "De waardin biedt een warme maaltijd en een bed voor de nacht aan, maar ze waarschuwt elke gast om "
        "de deur op slot te doen. 's Ochtends openen de kooplieden hun kraampjes op het marktplein en "
        "verkopen ze brood, kaas, verse vis en genezende drankjes. Een jonge ridder heeft de koning om "
        "toestemming gevraagd om de rivier tot aan de bron te volgen, omdat nog niemand die daarheen ging "
        "ooit is teruggekomen. Het weer verandert: vanavond wordt zware regen verwacht en langs de kust zal "
        "het hard waaien. Wil je deze opdracht aannemen? Je beloning is honderd gouden munten en de "
        "dankbaarheid van het volk.\n"
        "Hallo, vriend! Welkom in onze stad. Bedankt voor je hulp van gisteren. Waar is de dichtstbijzijnde "
        "winkel? Ik zoek mijn broer, die drie dagen geleden van huis is vertrokken en niet is teruggekomen. "
        "Wees voorzichtig op de brug, hij is heel oud. Sla je spel op voordat je de stad verlaat. De strijd "
        "begint bij zonsopgang, dus rust uit en eet iets."
    ),
    "pl": (
        "Stara droga do wioski na północy prowadzi przez ciemny las, w którym nocą polują wilki. Podróżni "
        "mówią, że pod górą śpi smok, który strzeże skarbu ze złota i srebra. Karczmarka oferuje ciepły "
        "posiłek i łóżko na noc, ale ostrzega każdego gościa, żeby zamknął drzwi na klucz. Rano kupcy "
        "otwierają swoje stragany na rynku i sprzedają chleb, ser, świeże ryby i mikstury lecznicze. Młody "
        "rycerz poprosił króla o pozwolenie, by podążać wzdłuż rzeki aż do jej źródła, ponieważ nikt, kto "
        "tam poszedł, nigdy nie wrócił. Pogoda się zmienia: dziś wieczorem spodziewane są silne opady "
        "deszczu, a wzdłuż wybrzeża będzie wiał mocny wiatr. Czy chcesz przyjąć to zadanie? Twoją nagrodą "
        "będzie sto złotych monet i wdzięczność ludu.\n"
        "Cześć, przyjacielu! Witaj w naszym mieście. Dziękuję za twoją wczorajszą pomoc. Gdzie jest "
        "najbliższy sklep? Szukam mojego brata, który wyszedł z domu trzy dni temu i jeszcze nie wrócił. "
        "Uważaj na moście, jest bardzo stary. Zapisz grę, zanim opuścisz miasto. Bitwa zaczyna się o "
        "świcie, więc odpocznij i coś zjedz."
    ),
    "ru": (
        "Старая дорога в северную деревню идёт через тёмный лес, где по ночам охотятся волки. Путники "
        "говорят, что под горой спит дракон, который охраняет сокровище из золота и серебра. Хозяйка "
        "трактира предлагает горячий ужин и кровать на ночь, но предупреждает каждого гостя, чтобы он "
        "запер дверь. Утром торговцы открывают свои лавки на рыночной площади и продают хлеб, сыр, свежую "
        "рыбу и целебные зелья. Молодой рыцарь попросил у короля разрешения пройти вдоль реки до самого "
        "истока, потому что никто из тех, кто туда ушёл, так и не вернулся. Погода меняется: сегодня "
        "вечером ожидается сильный дождь, а на побережье будет дуть сильный ветер. Хотите принять это "
        "задание? Вашей наградой будут сто золотых монет и благодарность народа.\n"
        "Привет, друг! Добро пожаловать в наш город. Спасибо за твою вчерашнюю помощь. Где ближайший "
        "магазин? Я ищу своего брата, который ушёл из дома три дня назад и до сих пор не вернулся. Будь "
        "осторожен на мосту, он очень старый. Сохрани игру, прежде чем покинуть город. Битва начнётся на "
        "рассвете, так что отдохни и поешь."
    ),
}
