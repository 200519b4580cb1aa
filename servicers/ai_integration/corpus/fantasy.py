"""Original fantasy prose about the valley of Emberwick: places, people, quests, weather, lore.

Paragraphs are separated by blank lines; each is one training sequence for the trigram model.
"""

TEXT = """\
The village of Emberwick sits where the river Saltmere bends around a hill of black stone.
Its roofs are slate, its chimneys smoke from dawn to dusk, and its people are slow to trust
strangers but quick to feed them. Travellers say the bread of Emberwick is the best in the valley.

Welcome, traveller. The road north is dangerous tonight, so rest here by the fire.
The stew is hot, the beds are dry, and nobody asks questions they do not need answered.

The innkeeper Maela keeps the Lantern and Lark, the only inn in Emberwick.
She remembers every face that has passed her door, and she never forgets a debt.
When the wind turns cold she lights a lantern in the window for anyone lost on the road.

Maela leans across the counter and lowers her voice. The caravan from Kaldmoor is three days late.
The merchants say the bridge is down, but I think something took them on the old road.
If you find the caravan, the guild will pay you well, and I will pay you better.

The blacksmith Hald works at the forge beside the well. His hammer rings from first light,
and the sparks fly out into the street like fireflies. He is a big man with burned hands
and a gentle voice, and he has forged every sword the village guard has ever carried.

Hald sets down his hammer and looks at your blade. This steel is tired, friend.
Bring me iron from the Greyspine mines and I will make you a sword that will not break.
The goblins took the mines last winter, so you will have to take the iron back from them.

The ranger Tamsin knows the Thornwood better than anyone alive. She walks without a sound,
reads tracks like a scholar reads books, and carries a bow of yew older than the village.
She does not like crowds, and she likes wolves even less.

Tamsin kneels by the path and touches the soft earth. Wolves, she says, a pack of six.
They passed here at dawn, heading toward the old mill. Something is driving them out of the forest.
Stay close to me and keep your torch low, and do not run if they come.

The Thornwood is a dark forest of twisted oaks and silver thorns.
Its paths move when no one is watching, and the light beneath its branches is always green.
Hunters who stay too long hear voices calling their names from between the trees.

Deep in the Thornwood stands a stone circle that no one remembers building.
On nights of the full moon the stones hum, and pale lights dance above the grass.
The old people of Emberwick leave bread and salt at the edge of the forest on those nights.

The mage Corvin lives alone in the Ashen Tower, on the ridge above the village.
He is older than anyone can count, and his beard is as grey as the tower stones.
He studies the stars, speaks to ravens, and sends apprentices away before they learn too much.

Corvin peers at you over his spectacles. You carry something that does not belong to you.
Do not be afraid. The amulet chose you, and it does not choose lightly.
Bring it to the ruins of Kaldmoor, and we shall learn what it wants.

The dragon Vaskarr sleeps beneath the Greyspine Mountains on a bed of stolen gold.
When he wakes the mountains shake, the rivers steam, and the sky burns red for three nights.
The last time he woke, the old kingdom of Kaldmoor fell to ash in a single season.

Some say Vaskarr is only a story told to frighten children. The miners know better.
They have felt the warm breath rising through the tunnels, and they have heard him dream.
When the deep halls grow warm, the miners put down their picks and go home.

The river Saltmere runs fast and cold from the mountains to the sea.
Its water tastes of salt even a hundred miles from the coast, and no one knows why.
The ferryman Brannoc carries travellers across at the bend for a copper coin.

Brannoc spits into the river and shakes his head. I do not cross after dark, not anymore.
Last week something pulled at the rope from below, something with long white hands.
Come back at dawn and I will take you across for free.

Captain Orrin commands the guard of Emberwick, twelve tired men and one old hound.
He is honest, stubborn and brave, and he has not slept a full night since the bandits came.
His armour is dented and his cloak is patched, but his word is worth more than gold.

Orrin unrolls a map on the table. Bandits have taken the old mill on the eastern road.
They rob the farmers, burn the fields and laugh at my men from behind the walls.
I need someone who can fight and someone who can think. Perhaps you are both.

The old mill stands by the stream where the eastern road crosses the water.
Its wheel has not turned in twenty years, and its walls are black with moss.
At night the bandits light fires on the roof, and the smoke can be seen from the village.

The market of Emberwick opens at dawn on the first day of every week.
Farmers bring apples, cheese and wool, and merchants bring spices, silk and news from the coast.
A fortune teller sits beneath a blue awning and tells every customer the same fortune.

The fortune teller takes your hand and smiles. You will travel far and return changed.
You will find what you seek in a place of fire and stone, but you will not like what you find.
That will be two silver coins, and I accept no refunds.

The ruins of Kaldmoor lie two days north of Emberwick, across the river and the high moor.
Broken towers rise from the heather, and the old roads are paved with cracked white stone.
Once it was the greatest city of the north. Now only crows and ghosts live there.

The kings of Kaldmoor were wise and proud, and in the end their pride destroyed them.
The last king tried to bind the dragon with a chain of silver and a song of power.
The chain broke, the song failed, and the king was never seen again.

Beneath the ruins there are halls that have not seen the sun for three hundred years.
Their walls are carved with stories of the old kingdom, and their floors are thick with dust.
The doors are sealed with runes that glow when a stranger comes near.

The healer Wren grows herbs in a garden behind the chapel. She knows every plant in the valley,
which ones heal and which ones kill, and she keeps both kinds in separate jars.
The people of Emberwick trust her more than they trust any priest.

Wren wipes her hands on her apron. The fever is spreading in the lower village.
I need silverleaf from the Thornwood, and I need it before the moon is full.
It grows near the stone circle. Be careful, and do not eat anything you find there.

The goblins of the Greyspine mines are small, green and clever, and they fight in swarms.
They fear fire and bright light, and they love anything that shines.
A traveller who leaves a silver coin at the mouth of a tunnel may pass in peace.

The goblin chief Skrag wears a crown made from a copper pot and calls himself king of the deep.
He is cruel to his own and cowardly to others, but he is no fool.
He knows the tunnels better than any miner, and he knows where the dragon sleeps.

Skrag grins with too many teeth. You want iron, human? Iron is easy.
Bring Skrag the shiny stone from the river, and Skrag will show you the iron.
Or fight, and Skrag's children will eat well tonight.

Rain falls on Emberwick in grey curtains, and the streets turn to mud.
Water runs from the slate roofs into the barrels, and the chickens hide under the carts.
In the Lantern and Lark the fire burns higher, and the stories grow longer.

A thick fog rolls up from the river and swallows the village.
Lanterns glow like small moons in the grey, and voices sound close and far at once.
Somewhere a bell rings, slow and muffled, and then it stops.

A storm comes over the mountains with a roar like an army.
Lightning splits the sky, thunder shakes the windows, and the wind tears at the thatch.
The river rises fast, and the ferryman drags his boat high onto the bank.

Snow falls softly on the valley, covering the fields and the roofs in white.
The forge glows orange in the dusk, and children build snow giants in the square.
The wolves come down from the hills in winter, so the shepherds sleep with their flocks.

Dawn breaks over the Greyspine Mountains, gold and pink above the dark peaks.
Mist rises from the river, birds begin to sing in the orchards, and smoke curls from the chimneys.
The baker opens her shutters, and the smell of fresh bread fills the street.

Dusk settles over the moor, and the heather turns purple in the last light.
The first stars appear above the ruins, and an owl calls from a broken tower.
The road is empty, and the night is very quiet.

Night in the Thornwood is never silent. Branches creak, leaves whisper and small things scurry.
Far away a wolf howls, and another answers, closer than the first.
The campfire crackles, and the shadows of the trees lean in to listen.

The summer is hot and dry, and the river runs low over white stones.
Farmers pray for rain, the dust hangs over the roads, and tempers grow short in the heat.
In the evening the whole village sits outside and waits for the cool wind from the mountains.

Autumn paints the Thornwood red and gold. The orchards are heavy with apples,
and the harvest carts roll into the village from dawn until long after dark.
It is the season of the lantern festival, when every house hangs a light for the dead.

At the lantern festival the people of Emberwick walk to the river with candles in paper boats.
They set the boats on the water and watch them float away toward the sea.
Each light is a memory, and each memory is a promise not to forget.

You draw your sword as the wolves circle the camp. Their eyes shine green in the firelight.
The first one leaps, and you strike it aside. The second one bites your shield.
Tamsin's arrows sing out of the dark, and the pack breaks and runs.

The bandit leader is a tall woman with a scarred face and two curved knives.
She laughs when she sees you. Orrin sent a child to do his work, she says.
Then she attacks, fast as a snake, and the fight is on.

Steel rings on steel in the narrow hall. You parry, step back and parry again.
The bandit slips on the wet stone, and you see your chance.
Your blade finds its mark, and she falls to her knees and drops her knives.

The goblins pour out of the tunnel with torches and spears, shrieking in their strange tongue.
You hold the narrow bridge while they press forward. Your shield is heavy, your arm is tired.
Then Corvin raises his staff, and a wall of blue fire drives them back into the dark.

Vaskarr opens one eye, and the cavern fills with red light.
His voice is deep enough to shake the stones. Who dares to wake me?
You stand your ground, though your knees are shaking, and you tell him your name.

The dragon laughs, and smoke pours from his nostrils. Brave, or foolish. It is hard to tell with humans.
I know what you carry, little one. The amulet of Kaldmoor belonged to a king who betrayed me.
Give it to me, and I will let your village live another hundred years.

The road from Emberwick to Kaldmoor is long and lonely.
It climbs through the orchards, crosses the river at the ferry and winds across the high moor.
There are no inns on the moor, only old shepherd huts and standing stones.

The eastern road runs through farmland and low hills toward the coast.
Merchants travel it in caravans, guarded by hired swords, and they pay the toll at the old mill.
Since the bandits came, fewer caravans travel it, and the market grows thin.

The mountain pass is narrow and steep, and snow lies in it even in summer.
Rocks fall without warning, and the wind can push a man off the edge.
The miners built a shrine at the top, and every traveller leaves a stone on it for luck.

A merchant with a red hat waves you over. Rare goods from the coast, he says.
Rope, lamp oil, healing potions and a map of the Greyspine tunnels, only slightly burned.
Everything is for sale, and everything is half price for a hero.

A child tugs at your sleeve. Are you a hero? My father says heroes are not real.
If you are a hero, can you find my cat? She ran into the old well, and she will not come out.
I will give you my best marble if you find her.

An old farmer leans on his fence and watches the road. Strange times, he says.
The cows will not give milk, the dogs bark at nothing, and the well water tastes of smoke.
Something is waking up in the mountains, and it is not in a good mood.

The guard at the gate raises his spear. Halt. State your name and your business in Emberwick.
We have had trouble with bandits, so we check everyone who comes through.
You may enter, but keep your weapons sheathed inside the walls.

The chapel bell rings at noon, and the priest Aldous opens the doors.
He is a thin man with kind eyes and a voice that fills the whole valley when he sings.
He keeps the old records of Emberwick in a locked chest beneath the altar.

Aldous opens the chest and lifts out a crumbling book. The chronicle of the valley, he says.
It tells of the fall of Kaldmoor, of the dragon and of a silver amulet that could bind him.
The last pages were torn out long ago, and no one knows who took them.

The quest is complete. The caravan is safe, the merchants are grateful, and the guild pays in gold.
Maela pours you a drink on the house and tells everyone in the inn what you have done.
For one night, at least, you are the most famous person in Emberwick.

You return to the village with the iron, and Hald takes it without a word.
He works through the night, and in the morning he places a new sword in your hands.
It is light, sharp and balanced, and the blade shines like water in the sun.

You bring the silverleaf to Wren, and she brews a medicine that smells of mint and smoke.
Within three days the fever breaks, and the children of the lower village play in the street again.
Wren does not thank you with words, but she gives you a small bottle of her best healing potion.

The bandits are gone, the old mill is quiet, and the eastern road is open again.
Orrin shakes your hand and offers you a place in the guard.
The pay is poor, he says, but the company is good and the stew is free.

The amulet grows warm in your hand as you walk through the ruins of Kaldmoor.
Runes light up on the walls as you pass, and a hidden door opens with a sigh of ancient air.
Beyond it, a stair leads down into darkness, and you hear a voice singing far below.

The stone circle hums louder as you approach, and the lights gather above the central stone.
A figure of pale light steps out of the air, tall and silent, with eyes like stars.
It points toward the mountains, and then it fades away like mist in the morning sun.

A raven lands on your shoulder and speaks in Corvin's voice. Hurry. The dragon stirs.
The mountain roads are closing, and the goblins are gathering at the mine gates.
Meet me at the Ashen Tower before the moon rises, and bring the amulet.

The Ashen Tower is taller inside than outside, and its stairs never seem to end.
Books cover every wall, candles float in the air, and a great brass telescope points at the sky.
At the top, Corvin waits beside a map of the stars drawn in silver ink.

Corvin taps the map with a long finger. The stars are turning, and the old binding is failing.
When the red star rises above the Greyspine, the dragon will wake for good.
We have seven nights. It is not enough, but it will have to do.

The people of Emberwick gather in the square as the sky turns red over the mountains.
Mothers hold their children close, the guard stands at the gate, and Hald hands out spears.
No one runs. This is their home, and they will not leave it to a dragon.

You climb the last ridge as the sun sets behind you. Below lies the valley, small and far away.
Ahead, the mountain smokes, and the stones are warm beneath your boots.
You take a deep breath, touch the amulet and walk into the dark.

The tavern is loud tonight. A bard plays a fast tune on a battered fiddle,
farmers dance on the tables, and Maela shouts at them to get down.
In the corner a hooded stranger drinks alone and watches the door.

The hooded stranger slides a letter across the table. Read it later, and read it alone.
There are people in this village who are not what they seem.
Trust the ranger, trust the healer, and do not trust the mage.

The stranger is gone before you can answer, and the letter smells of smoke and lavender.
Inside, a single line is written in an old and careful hand.
The king of Kaldmoor did not die. He is waiting beneath the mountain.

Every child in Emberwick knows the rhyme of the silver king.
Silver chain and silver song, the king was brave, the king was wrong.
Dragon sleeps and dragon dreams, nothing is the way it seems.

The miners of the Greyspine are a tough and quiet folk who speak more with their hands than words.
They carry lamps of blue glass that do not burn the air, and they sing to keep the dark away.
They say the mountain listens, and that a good song can make a tunnel safe.

A miner with a grey beard blocks the tunnel entrance. Turn back, stranger.
The deep halls are warm again, and warm halls mean the dragon is dreaming.
If you go down there, go quietly, and do not sing.

The shepherd huts on the high moor are made of stone and turf, low against the wind.
Travellers may use them freely, but they must leave dry wood for the next one who comes.
It is the oldest law on the moor, and the spirits of the moor enforce it.

Wind blows across the moor, bending the heather and whistling through the standing stones.
Clouds race across the sky, and their shadows race across the ground beneath them.
A hawk hangs high above, still as a painted bird, and watches for mice in the grass.

The sea lies three days east of Emberwick, where the Saltmere meets the grey water.
There the port of Gullhaven trades in fish, salt and stories from across the waves.
Sailors in Gullhaven say the dragon once crossed the sea, and the sea remembers.

The harbour master of Gullhaven counts every ship and every coin that passes through the port.
She is sharp, fair and very hard to fool, and she has a long memory for smugglers.
If you need passage across the sea, she is the one you must convince.

The deep forest is no place for the careless. Roots trip the feet, thorns tear the cloak,
and the paths lead in circles if you do not mark the trees.
Tamsin cuts a small sign into the bark as she walks, three lines and a circle.

You make camp beneath an old oak as the light fades. Tamsin lights a small fire and says little.
The stars come out one by one between the leaves. Somewhere an owl hoots twice.
You sleep with your hand on your sword, and you dream of fire.

In the morning the camp is covered in frost, and the fire is cold ash.
There are tracks around the camp that were not there last night, long and narrow, like hands.
Tamsin studies them for a long time and says nothing, and then she says we should go.

The bridge over the Saltmere is old stone, wide enough for two carts side by side.
Someone has broken it in the middle, and the gap is too wide to jump.
On the far bank, an overturned wagon lies in the reeds with its wheels in the air.

You find the caravan in a hidden valley beyond the river. The wagons are empty,
the horses are gone, and the merchants are tied up in a cave, cold and frightened but alive.
One of them whispers that the bandits were not looking for gold. They were looking for a map.

The map shows the tunnels beneath the Greyspine, drawn in the old style of Kaldmoor.
One tunnel is marked in red ink, and beside it someone has written a single word. Throne.
The bandits wanted this map badly enough to kill for it. Now it is yours.

Gold is heavy, and fame is light, says the old saying of the valley.
A wise traveller carries neither very far, but spends them on bread, friends and a dry bed.
The foolish traveller dies rich on the road, with no one to remember his name.

The well in the square is the oldest thing in Emberwick, older than the chapel and the inn.
Its stones are carved with signs no one can read, and its water never freezes.
Children drop coins into it for luck, and sometimes, late at night, the coins are returned.

The sword of the last king lies somewhere beneath the ruins, the songs say.
Its blade is made of star iron, and it cannot be broken by any fire.
Whoever holds it may speak to the dragon as an equal, and the dragon must listen.

Your journey is not over. The road goes on, as roads do, past the next hill and the next river.
Somewhere ahead there is a fire, a meal and a friend, and somewhere a new danger waits.
Tighten your boots, check your sword and keep walking. The valley needs its heroes.
"""
