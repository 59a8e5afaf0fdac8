"""Builds ``builtin.jsonl``, the package's prompt set, from the lists below (all written for this package).

Run ``python -m hf_minitron.prompts.build`` after editing a list; ``tests/test_generate_prompts.py`` checks the shipped
file is what this module builds. Every prompt is a record ``{"id", "kind", "prompt"}``; the order is a fixed shuffle
(seed :data:`SHUFFLE_SEED`), so any slice, e.g. the last 10% a held-out split takes, mixes every kind.

Kinds: ``question`` (explain a concept, general knowledge), ``instruction`` (how-to, lists, comparisons, emails,
definitions, classification), ``creative`` (stories, poems, descriptions), ``passage`` (continue, summarise, rewrite
or question one of the short seed passages), ``continuation`` (continue a story opening), ``math`` (word problems
with generated numbers), ``code`` (small programming tasks), ``advice`` (everyday situations).
"""

from __future__ import annotations

import json
import random
from pathlib import Path

SHUFFLE_SEED = 12
OUT_FILE = Path(__file__).with_name("builtin.jsonl")

CONCEPTS = [
    # science and nature
    "photosynthesis", "gravity", "the water cycle", "evolution by natural selection", "plate tectonics",
    "the immune system", "vaccines", "DNA", "cells", "the food chain", "climate", "weather fronts", "volcanoes",
    "earthquakes", "the phases of the moon", "tides", "the seasons", "black holes", "the speed of light",
    "electricity", "magnetism", "static electricity", "friction", "inertia", "energy conservation", "sound waves",
    "the rainbow", "atoms", "chemical reactions", "acids and bases", "the periodic table", "rust", "erosion",
    "pollination", "migration of birds", "hibernation", "coral reefs", "rainforests", "deserts", "glaciers",
    "the greenhouse effect", "renewable energy", "solar panels", "wind turbines", "recycling", "composting",
    "bacteria", "viruses", "sleep", "digestion", "the heart", "muscles", "the brain", "memory", "habits",
    # technology
    "the internet", "email", "computer memory", "a computer program", "algorithms", "machine learning",
    "neural networks", "encryption", "passwords", "cloud storage", "GPS", "batteries", "3D printing",
    "search engines", "open-source software", "version control", "databases", "spreadsheets", "robots",
    "the binary number system", "compression of files", "a web browser", "Wi-Fi",
    # economics and society
    "inflation", "compound interest", "a budget", "taxes", "supply and demand", "a loan", "insurance",
    "saving for retirement", "a credit score", "trade between countries", "democracy", "a constitution",
    "voting", "public libraries", "volunteering", "teamwork", "leadership", "negotiation", "marketing",
    # everyday and culture
    "time zones", "calendars", "maps", "the metric system", "fractions", "percentages", "probability",
    "averages", "prime numbers", "geometry", "music notation", "rhythm", "perspective in drawing",
    "color mixing", "storytelling", "poetry", "theatre", "photography", "museums", "chess", "board games",
    "team sports", "stretching", "balanced meals", "vitamins", "drinking enough water", "first aid",
    "fermentation", "baking soda", "yeast", "spices", "coffee", "tea", "bread", "cheese", "gardening",
    "bees", "ants", "octopuses", "whales", "wolves", "owls", "trees", "mushrooms", "rivers", "islands",
]

CONCEPT_TEMPLATES = [
    ("question", "What is {x}?"),
    ("question", "Explain {x} in simple terms."),
    ("question", "How would you explain {x} to a ten-year-old?"),
    ("question", "Why does {x} matter in everyday life?"),
    ("question", "Give three examples that help me understand {x}."),
    ("question", "What is a common misconception about {x}, and what is actually true?"),
    ("instruction", "Write a short paragraph about {x} for a school newsletter."),
    ("question", "Describe {x} in two sentences."),
    ("question", "What are some interesting facts about {x}?"),
    ("instruction", "Write five quiz questions about {x}, with answers."),
    ("question", "What would a beginner need to know first about {x}?"),
]

ACTIVITIES = [
    "bake a loaf of bread", "plant a vegetable garden", "learn a new language", "prepare for a job interview",
    "start running", "save money each month", "write a cover letter", "make a cup of tea", "cook rice",
    "organize a small closet", "fix a flat bicycle tire", "study for an exam", "give a short presentation",
    "take better photos with a phone", "start a journal", "learn to play the guitar", "clean a kitchen quickly",
    "plan a weekend trip", "make new friends in a new city", "keep houseplants alive", "fall asleep faster",
    "make a simple budget", "learn to swim", "paint a room", "write a short poem", "start learning to code",
    "choose a good book", "plan a birthday party", "make pancakes", "brew coffee at home", "reduce food waste",
    "wash a wool sweater", "pack a suitcase", "train a puppy to sit", "build a birdhouse", "make a paper airplane",
    "teach a child to ride a bike", "prepare for a long hike", "set up a home office", "back up a computer",
    "create a strong password", "write a thank-you note", "read faster", "remember names", "stay focused while "
    "studying", "make a vegetable soup", "bake cookies", "start a small business", "volunteer in my community",
    "learn to draw", "meditate", "stretch after exercise", "make homemade pizza", "grow herbs on a windowsill",
    "care for a cat", "write a short story", "keep a conversation going", "apologize sincerely", "set goals for "
    "the year", "prepare for a power outage", "change a light bulb safely", "make a smoothie", "sew a button",
    "iron a shirt", "make a weekly meal plan", "learn chess", "improve my handwriting", "write an essay",
    "recycle correctly", "compost kitchen scraps", "find a good used bicycle", "sharpen a kitchen knife",
    "make lemonade", "plan a picnic", "host a board game night", "prepare for a first day at a new job",
]

ACTIVITY_TEMPLATES = [
    ("instruction", "How do I {x}?"),
    ("instruction", "Give step-by-step instructions to {x}."),
    ("instruction", "List five tips for someone who wants to {x}."),
    ("question", "What mistakes do beginners make when they try to {x}?"),
    ("question", "What do I need before I {x}?"),
    ("instruction", "Write a short checklist for how to {x}."),
    ("question", "How long does it usually take to {x}, and what affects it?"),
]

SUBJECTS = [
    "a lighthouse keeper", "a lost umbrella", "a robot that learns to paint", "an old library at night",
    "a busy train station", "a cat who thinks she is a queen", "a village where it never stops snowing",
    "the last bookshop in town", "a friendship between a fox and a crow", "a child's first day at school",
    "a message found in a bottle", "a garden that grows overnight", "a detective who is afraid of the dark",
    "a small bakery on a rainy morning", "a dragon who collects teacups", "two strangers stuck in an elevator",
    "a forgotten birthday", "the first snowfall of winter", "a mountain climber near the summit",
    "an astronaut looking back at Earth", "a grandmother's recipe book", "a stray dog who finds a home",
    "a market at sunrise", "a storm at sea", "a town fair", "an inventor whose machines always fail",
    "a whale singing in the deep ocean", "a clock that runs backwards", "a kite stuck in a tree",
    "a night of fireflies", "a violin in an attic", "a family road trip", "a quiet morning in the forest",
    "a letter that arrives fifty years late", "an island with no name", "a chess game between rivals",
    "a farmer waiting for rain", "a city seen from a rooftop", "a shy student who joins the choir",
    "a broken bicycle", "a map with one place missing", "a penguin who wants to fly", "an empty playground",
    "a ship's cook", "a spring flower pushing through concrete", "the moon talking to the sun",
    "a museum guard who notices a painting changing", "a bus driver's last route before retiring",
]

SUBJECT_TEMPLATES = [
    ("creative", "Write a short story about {x}."),
    ("creative", "Write a poem about {x}."),
    ("creative", "Describe {x} using all five senses."),
    ("creative", "Write a short dialogue inspired by {x}."),
    ("creative", "Write a haiku about {x}."),
    ("creative", "Write a fable about {x} that ends with a lesson."),
]

PAIRS = [
    ("cats", "dogs"), ("trains", "planes"), ("tea", "coffee"), ("summer", "winter"), ("books", "films"),
    ("renting a home", "buying a home"), ("walking", "cycling"), ("email", "letters"), ("a laptop", "a tablet"),
    ("solar power", "wind power"), ("weather", "climate"), ("a virus", "bacteria"), ("a lake", "a sea"),
    ("baking", "frying"), ("saving", "investing"), ("a city", "the countryside"), ("rain", "snow"),
    ("jogging", "swimming"), ("a library", "a bookstore"), ("printed maps", "GPS apps"), ("reading", "listening to "
    "audiobooks"), ("a crocodile", "an alligator"), ("a frog", "a toad"), ("a moth", "a butterfly"),
    ("working from home", "working in an office"), ("a debit card", "a credit card"), ("speed", "velocity"),
    ("weight", "mass"), ("a simile", "a metaphor"), ("a poem", "a song"), ("a meteor", "a comet"),
    ("a hurricane", "a tornado"), ("a republic", "a monarchy"), ("a hobby", "a job"), ("a fruit", "a vegetable"),
    ("hardware", "software"), ("a list", "a dictionary in Python"), ("RAM", "storage"), ("hot", "iced drinks"),
    ("studying alone", "studying in a group"), ("a bus", "a tram"), ("a violin", "a cello"), ("oil paint",
    "watercolor"), ("a plan", "a goal"), ("talent", "practice"), ("a podcast", "a radio show"),
]

PAIR_TEMPLATES = [
    ("instruction", "What are the main differences between {a} and {b}?"),
    ("instruction", "Compare {a} and {b}: list two advantages of each."),
    ("question", "What do {a} and {b} have in common?"),
]

# Short seed passages written for this package (invented places and people; no copied text).
PASSAGES = [
    "The town of Millbrook sits where two rivers meet. Every spring the water rises, and the bakers on the low "
    "street carry their flour sacks upstairs. Children make a game of guessing which step the river will reach. "
    "Last year it stopped one step short of the church door.",
    "Honeybees communicate the location of flowers with a movement called the waggle dance. The angle of the dance "
    "tells other bees the direction relative to the sun, and the length of the waggle tells them the distance. A "
    "single strong dance can send dozens of workers to the same patch of clover.",
    "Mara opened the greenhouse door and stopped. Every tomato plant had been turned to face the wall. She checked "
    "the lock, which was still fastened from the inside. Behind her, the wind chimes began to ring, although the "
    "air was perfectly still.",
    "A good loaf of bread needs only four ingredients: flour, water, salt and yeast. The magic is in the time. "
    "Slow fermentation lets the yeast produce gases that lift the dough and acids that give the crust its flavour. "
    "Rushing the rise gives a loaf that is dense and bland.",
    "The city council of Harrowgate voted on Tuesday to close Elm Street to cars on Sunday afternoons. Supporters "
    "say families will use the space for markets and games. Some shop owners worry that fewer drivers will mean "
    "fewer customers. The trial begins next month and will last one summer.",
    "Dear Aunt Rosa, thank you for the scarf. It arrived on the coldest day of the year, which felt like good "
    "timing. I have worn it to school every day since. My friend Theo says the color reminds him of autumn leaves. "
    "I hope your knee is feeling better.",
    "Clouds form when warm, moist air rises and cools. Cooler air cannot hold as much water vapour, so some of it "
    "condenses onto tiny particles of dust or salt. Billions of these droplets together make the cloud we see. "
    "When the droplets grow heavy enough, they fall as rain.",
    "The new Trailhead backpack weighs less than a kilogram but holds enough for a three-day hike. Its frame "
    "spreads the load across your hips instead of your shoulders. Side pockets fit two water bottles, and the "
    "fabric sheds light rain. It comes in green, grey and orange.",
    "Old Peder had fixed clocks in the same shop for forty years. He could tell what was wrong with a clock by "
    "listening to it for a minute. One winter morning a girl brought in a clock that made no sound at all, yet its "
    "hands were moving.",
    "Spreadsheets organize information into rows and columns. Each cell can hold a number, a piece of text or a "
    "formula that calculates a value from other cells. When one number changes, every formula that depends on it "
    "updates at once, which makes spreadsheets useful for budgets and plans.",
    "At the edge of the desert there is a well that never runs dry. Travelers leave a small stone beside it each "
    "time they drink. Over the centuries the stones have grown into a low wall that circles the well, and no one "
    "remembers who placed the first one.",
    "Regular sleep helps the body repair muscles and helps the brain store what it learned during the day. Adults "
    "usually need seven to nine hours. Keeping a steady bedtime, dimming screens in the evening and avoiding "
    "caffeine late in the day all make falling asleep easier.",
    "The Riverside Community Garden is looking for volunteers this season. Tasks include watering, weeding and "
    "helping at the Saturday produce stand. No experience is needed, and tools are provided. Vegetables that are "
    "not sold are given to the food bank on Monday.",
    "When Ilya moved to the coast, he could not sleep because of the noise of the waves. After a month he could not "
    "sleep without it. On a visit back to the quiet farm where he grew up, he lay awake listening for the sea.",
    "A compass needle points north because it is a small magnet that lines up with Earth's magnetic field. The "
    "magnetic north pole is not in the same place as the geographic North Pole, and it slowly moves over the years. "
    "Sailors once had to correct their readings using charts of this difference.",
    "The first thing visitors notice about the Glass Museum is the light. Sunlight passes through hundreds of "
    "colored panels and paints the floor in shifting patterns. Guides say the best time to visit is late afternoon, "
    "when the shadows stretch across the main hall.",
    "Compound interest means you earn interest not only on the money you saved but also on the interest it has "
    "already earned. Over a few years the difference is small, but over decades it grows large. Starting to save "
    "early matters more than saving large amounts later.",
    "The team had practiced the relay for weeks, but on race day the baton slipped from Jonah's hand. For a moment "
    "the whole stadium seemed to hold its breath. He picked it up, ran harder than he ever had, and handed it to "
    "Lena just in time.",
    "Octopuses have three hearts and blue blood. Each of their eight arms contains many nerve cells, so an arm can "
    "react to touch without waiting for the brain. They change the color and texture of their skin in less than a "
    "second to hide from predators.",
    "To make a simple vegetable soup, soften an onion in a little oil, then add chopped carrots, celery and "
    "potatoes. Cover with stock and simmer until the vegetables are tender. Season with salt and pepper, and add a "
    "handful of herbs just before serving.",
    "The island ferry runs twice a day in summer and once a day in winter. When storms close the harbor, the "
    "islanders share what they have: bread from the bakery, eggs from the farms, and news from the one radio that "
    "still works reliably.",
    "A password manager stores all your passwords in an encrypted vault that you unlock with one strong master "
    "password. It can create long random passwords for each site, so a leak from one website does not put your "
    "other accounts at risk.",
    "Every evening at six, the old man on the third floor played the same tune on his trumpet. Neighbors set their "
    "clocks by it. One day the music did not come, and by half past six half the street was knocking on his door.",
    "Glaciers are rivers of ice that move slowly downhill under their own weight. As they move, they grind the rock "
    "beneath them and carry stones for long distances. Many valleys with steep walls and flat floors were carved by "
    "glaciers that melted thousands of years ago.",
    "Our school's science fair will be held in the gym on the first Friday of May. Projects can be done alone or in "
    "pairs. Each display needs a question, a method, results and a conclusion. Judges will look for careful "
    "measurements more than impressive equipment.",
    "The robot had been built to sort mail, but the post office closed. It wandered into the park and began sorting "
    "fallen leaves by color: red, yellow, brown. Children started bringing it leaves, and soon it had a small, "
    "patient audience every afternoon.",
    "Vaccines train the immune system by showing it a harmless piece or copy of a germ. The body makes antibodies "
    "and memory cells in response. If the real germ appears later, the immune system recognizes it and responds "
    "quickly, often before the person feels sick.",
    "The Blue Heron Café opened on Canal Street last week. It serves soups, sandwiches and cakes made each morning, "
    "and the owners buy their vegetables from farms within thirty kilometres. On Thursdays a local musician plays "
    "in the corner by the window.",
    "Nadia found the map inside a secondhand atlas. Someone had drawn a red line from the harbor to a hill marked "
    "only with a small star. On the back, in careful handwriting, were the words: do not go alone.",
    "Version control software records every change made to a set of files. If a change breaks something, you can "
    "return to an earlier version. It also lets several people work on the same project and combine their changes "
    "without overwriting each other's work.",
    "Deserts are not always hot. A desert is any place that receives very little rain, so large parts of the polar "
    "regions count as deserts too. Plants in hot deserts often store water in thick stems and open their pores "
    "only at night to lose less moisture.",
    "Tomorrow's forecast calls for heavy rain in the morning, clearing by early afternoon. Winds from the west may "
    "reach forty kilometres per hour near the coast. Temperatures will stay cool, and a light frost is possible in "
    "the valleys overnight.",
    "The orchestra's youngest member was a nine-year-old cellist named Pim. At her first concert her bow slipped "
    "during a quiet passage, and a single loud note rang out. The conductor smiled, paused, and had the whole "
    "orchestra play that note back to her.",
    "Trees in a forest are often connected underground by fungi that wrap around their roots. Through these "
    "networks, trees can exchange water and nutrients. Older trees may even pass sugar to young trees growing in "
    "the shade.",
    "Starting a small vegetable garden is easier than many people think. Choose a spot with at least six hours of "
    "sun, loosen the soil, and mix in compost. Begin with forgiving plants such as lettuce, beans and radishes, and "
    "water them in the morning.",
    "The lighthouse on Gull Point has not needed a keeper for thirty years, yet someone still paints its door every "
    "spring. Nobody in the village admits to doing it. This year the door is bright yellow.",
    "A budget is a plan for your money. List what comes in each month and what goes out, starting with necessities "
    "such as rent and food. Then decide how much to save before spending on extras. Reviewing the plan each month "
    "shows where small changes add up.",
    "When the power went out, the family gathered in the kitchen with candles. Without the television or phones, "
    "they played cards and told stories about the grandparents' childhood. When the lights came back on, nobody "
    "moved for a while.",
    "Rainbows appear when sunlight enters raindrops, bends, reflects off the back of the drop and bends again on "
    "the way out. Each color bends by a slightly different amount, so the white light spreads into bands. You can "
    "only see a rainbow with the sun behind you.",
    "The Northfield Library will extend its opening hours during exam season. From the first of June, the study "
    "rooms will stay open until ten in the evening. Students can book a room for up to three hours using their "
    "library card.",
]

PASSAGE_TEMPLATES = [
    ("passage", "Continue the following passage with one more paragraph.\n\n{x}"),
    ("passage", "Summarize this passage in one sentence.\n\n{x}"),
    ("passage", "Rewrite this passage in simpler words.\n\n{x}"),
    ("passage", "Suggest a title for this passage and explain your choice.\n\n{x}"),
    ("passage", "List the main points of this passage.\n\n{x}"),
    ("passage", "Write three questions a reader might ask after reading this passage.\n\n{x}"),
    ("passage", "Rewrite this passage in a more formal tone.\n\n{x}"),
    ("passage", "What is the tone of this passage? Explain with examples from the text.\n\n{x}"),
]

OPENINGS = [
    "The door at the end of the hallway had been locked for as long as anyone could remember.",
    "On the morning of her twelfth birthday, Ada found a key under her pillow.",
    "The rain had not stopped for nine days when the river began to whisper.",
    "Nobody in the village had ever seen a purple fox until that autumn.",
    "The spaceship's engine made a noise it had never made before.",
    "Grandpa's radio could only receive one station, and it played only at midnight.",
    "The new student sat in the back row and drew maps of places that did not exist.",
    "When the train stopped in the middle of the field, everyone looked out the window.",
    "The bakery smelled of cinnamon, but the baker looked worried.",
    "The last page of the diary was written in a language Tom did not recognize.",
    "Every tree in the park lost its leaves on the same night in July.",
    "The museum's oldest statue had moved three centimeters since yesterday.",
    "Lina's bicycle had a bell that rang by itself whenever danger was near.",
    "The fisherman pulled up his net and found a glass jar with a letter inside.",
    "It was the kind of quiet that comes just before something important happens.",
    "The little robot woke up alone in an empty warehouse.",
    "At the top of the hill stood a house with all its windows painted blue.",
    "The detective looked at the muddy footprints and sighed.",
    "Our class pet, a tortoise named Bolt, escaped on the first day of spring.",
    "The phone rang at three in the morning, and the voice said only my name.",
    "Sam had promised never to open the red box, but the box was humming.",
    "The circus arrived in town without anyone seeing the trucks.",
    "Snow fell inside the library, but only on the poetry shelves.",
    "My neighbor grows pumpkins the size of cars, and this year one is missing.",
    "The old map showed an island exactly where our town now stands.",
    "Just before the final exam, the lights in the school went out.",
    "The baker's daughter could hear what the bread was thinking.",
    "The king announced that anyone who could make him laugh would win a prize.",
    "When the tide went out, it revealed a staircase leading down into the sand.",
    "Mia's grandmother kept a jar of buttons, and each button had a story.",
    "The elevator had a button for a floor the building did not have.",
    "A small green boat drifted into the harbor with no one aboard.",
    "The city's pigeons all flew north on the same afternoon.",
    "The chess champion lost her first game in ten years to a child.",
    "Everyone in the family agreed that the summer cabin was haunted, except the dog.",
    "The letter was addressed to me, but it was dated a hundred years ago.",
    "The gardener planted one seed and told no one what it would become.",
    "Halfway across the bridge, the fog became so thick I could not see my hands.",
    "The inventor's newest machine was supposed to make tea; instead it made music.",
    "On the first day of the new job, my desk already had my name on it from years before.",
]

OPENING_TEMPLATES = [
    ("continuation", "Continue this story: {x}"),
    ("continuation", "Write the next two paragraphs of a story that begins: \"{x}\""),
]

FACT_QUESTIONS = [
    "Why is the sky blue?", "Why do leaves change color in autumn?", "How do airplanes stay in the air?",
    "Why do we have leap years?", "How does a refrigerator keep food cold?", "Why does ice float on water?",
    "How do fish breathe underwater?", "Why do cats purr?", "How do plants drink water?",
    "Why does the moon look different every night?", "How does a rainbow form?", "Why do onions make people cry?",
    "How do bees make honey?", "Why is the ocean salty?", "How does soap clean our hands?",
    "Why do we yawn?", "How does a microwave oven heat food?", "Why do stars twinkle?",
    "How do birds know where to migrate?", "What causes thunder?", "Why does bread go stale?",
    "How does a camera take a picture?", "Why do some animals hibernate?", "How do we hear sounds?",
    "Why does metal feel colder than wood at the same temperature?", "How do vaccines work?",
    "Why do we need to sleep?", "How does a bicycle stay upright when it moves?", "Why is exercise good for the heart?",
    "How are clouds formed?", "What makes popcorn pop?", "Why do boats float?", "How does a compass work?",
    "Why do we get goosebumps?", "How do touchscreens know where I touch?", "Why does the sun rise in the east?",
    "What is the difference between a planet and a star?", "How do trees help clean the air?",
    "Why do cuts heal?", "How does a battery store energy?", "Why does my voice sound different in a recording?",
    "How do chameleons change color?", "Why do apples turn brown after being cut?",
    "How does recycling paper work?", "What happens to the water when a puddle dries up?",
    "How do elevators work?", "Why do some fruits have seeds on the outside?", "How long does light from the sun "
    "take to reach Earth, and why?", "Why do we see lightning before we hear thunder?", "How do submarines dive?",
    "How many continents are there, and what are they?", "What is the largest ocean on Earth?",
    "Why do dogs have such a good sense of smell?", "How does the heart pump blood?", "What are fossils?",
    "How do glasses help people see better?", "Why do mountains have snow on top even in summer?",
    "How does a thermometer work?", "Why do zebras have stripes?", "What is the tallest kind of tree?",
]

SITUATIONS = [
    "I have too many tasks and do not know where to start", "my friend forgot my birthday and I feel hurt",
    "I get nervous before speaking in class", "I want to read more but I never find the time",
    "my roommate is very messy", "I keep waking up tired", "I disagree with a decision at work",
    "I moved to a new city and feel lonely", "I want to eat healthier on a small budget",
    "I forgot an important deadline", "my younger brother does not want to do his homework",
    "I spend too much time on my phone", "I want to ask for a raise", "my plants keep dying",
    "I am choosing between two job offers", "I lost my keys for the third time this month",
    "I want to start exercising but I feel embarrassed at the gym", "a neighbor plays loud music late at night",
    "I made a mistake that affected my team", "I want to learn something new this year",
    "my grandmother wants to learn to use a smartphone", "I am preparing for my first marathon",
    "I feel stuck writing my essay", "I want to make my mornings less rushed", "my dog barks when I leave home",
    "I have an argument with my best friend", "I want to save for a trip next year", "I cannot decide what to cook "
    "tonight", "I have to give feedback to a colleague", "I am starting university next month",
    "I keep procrastinating on cleaning", "I want to host dinner for eight people", "my old laptop is very slow",
    "I feel overwhelmed by the news", "I want to be more patient with my children",
]

SITUATION_TEMPLATES = [
    ("advice", "{X}. What should I do?"),
    ("advice", "{X}. Can you give me three practical suggestions?"),
    ("advice", "My friend says: \"{X}.\" How can I help?"),
]

EMAIL_RECIPIENTS = ["my manager", "a teacher", "a landlord", "a customer", "a new colleague", "my neighbor",
                    "a hotel", "a local newspaper", "the school principal", "an old friend"]
EMAIL_PURPOSES = ["asking for a day off", "thanking them for their help", "reporting a problem that needs fixing",
                  "apologizing for a late reply", "inviting them to a small celebration", "asking a question "
                  "about an invoice", "suggesting a meeting next week", "sharing good news"]

PRODUCTS = ["a reusable water bottle", "a desk lamp", "a pair of running shoes", "a wooden chess set",
            "a backpack for students", "a houseplant", "a rain jacket", "a set of colored pencils", "a bicycle helmet",
            "a kitchen timer", "a travel mug", "a cookbook for beginners", "a wool blanket", "a pair of headphones",
            "a board game for families", "a notebook made from recycled paper", "a solar-powered lantern",
            "a handmade candle", "a picnic basket", "a children's storybook"]

OCCASIONS = ["a friend's wedding", "a colleague's retirement", "the opening of a community garden",
             "a school graduation", "a team that won a local tournament", "a grandparent's ninetieth birthday",
             "the first day of a new club", "a farewell party for a neighbor who is moving away"]

BRAINSTORMS = [
    "ideas for a rainy day at home", "names for a bakery", "names for a pet goldfish", "themes for a school "
    "dance", "ways to reuse glass jars", "healthy snacks for work", "questions to ask at a job interview",
    "activities for a family picnic", "ways to save energy at home", "topics for a short science project",
    "gifts that cost almost nothing", "ways to make a small room feel bigger", "ideas for a short film",
    "fun facts to share with children", "ways to practice a new language every day", "hobbies that can be done "
    "outdoors", "ideas for a neighborhood event", "ways to reduce plastic at home", "titles for a mystery novel",
    "ways to stay cool in hot weather", "easy dinners with five ingredients", "ways to welcome a new classmate",
    "games that need no equipment", "things to pack for a beach day", "ways to thank a teacher",
]

BRAINSTORM_TEMPLATES = [("instruction", "List ten {x}."), ("instruction", "Suggest five {x} and explain one of them.")]

WORDS = ["curious", "generous", "resilient", "fragile", "ancient", "humble", "vivid", "patient", "reluctant",
         "abundant", "brief", "cautious", "diligent", "eager", "fierce", "gentle", "hollow", "immense",
         "jovial", "keen", "loyal", "meticulous", "nimble", "obscure", "peculiar", "quaint", "rigid", "serene",
         "tedious", "urgent", "vague", "wary", "zealous", "candid", "frugal", "gloomy", "hasty", "modest",
         "notorious", "optimistic", "persistent", "radiant", "sincere", "thorough", "versatile", "whimsical",
         "adapt", "borrow", "compare", "decline", "encourage", "forecast", "gather", "hesitate", "improvise",
         "justify", "linger", "migrate", "negotiate", "observe", "persuade", "recycle", "scatter", "tolerate",
         "wander", "harvest", "clarify", "estimate", "imitate", "reflect"]

WORD_TEMPLATES = [("instruction", "Define the word \"{x}\" and use it in a sentence."),
                  ("instruction", "Give two synonyms and one antonym for \"{x}\".")]

CODE_TASKS = [
    "returns the largest number in a list", "checks whether a word is a palindrome", "counts the vowels in a "
    "string", "reverses a list without using the built-in reverse", "returns the factorial of a number",
    "checks whether a number is prime", "converts Celsius to Fahrenheit", "returns the Fibonacci numbers up to n",
    "removes duplicates from a list while keeping the order", "counts how often each word appears in a sentence",
    "returns the average of a list of numbers", "finds the second smallest number in a list",
    "checks whether two strings are anagrams", "merges two sorted lists into one sorted list",
    "returns the sum of the digits of an integer", "capitalizes the first letter of every word",
    "checks whether a year is a leap year", "returns the longest word in a sentence", "flattens a list of lists",
    "converts a number of seconds to hours, minutes and seconds", "returns the greatest common divisor of two "
    "numbers", "validates that a password has at least eight characters and one digit", "computes the area of a "
    "circle from its radius", "returns the n most common letters in a text", "splits a list into chunks of size n",
]

CODE_LANGUAGES = ["Python", "Python", "JavaScript"]

CODE_SNIPPETS = [
    "for i in range(1, 11):\n    if i % 2 == 0:\n        print(i)",
    "def greet(name):\n    return f\"Hello, {name}!\"\n\nprint(greet(\"Sam\"))",
    "total = 0\nfor price in [3.5, 2.0, 4.25]:\n    total += price\nprint(round(total, 2))",
    "words = \"the cat sat on the mat\".split()\nprint(len(set(words)))",
    "numbers = [5, 3, 8, 1]\nnumbers.sort()\nprint(numbers[0], numbers[-1])",
    "def is_even(n):\n    return n % 2 == 0\n\nprint([n for n in range(10) if is_even(n)])",
    "count = {}\nfor ch in \"banana\":\n    count[ch] = count.get(ch, 0) + 1\nprint(count)",
    "x = 10\nwhile x > 0:\n    x -= 3\nprint(x)",
    "const items = [1, 2, 3];\nconst doubled = items.map(n => n * 2);\nconsole.log(doubled);",
    "def area(w, h=1):\n    return w * h\n\nprint(area(4), area(4, 5))",
    "names = [\"Ana\", \"Ben\", \"Cleo\"]\nfor i, name in enumerate(names, start=1):\n    print(i, name)",
    "text = \"Hello World\"\nprint(text.lower().replace(\"world\", \"there\"))",
]

CODE_SNIPPET_TEMPLATES = [("code", "Explain what this code does, line by line:\n\n{x}"),
                          ("code", "What does this code print? Explain why.\n\n{x}")]

CLASSIFY = [
    ("tomato, carrot, apple, potato, banana", "fruits and vegetables"),
    ("dolphin, shark, whale, salmon, seal", "mammals and fish"),
    ("iron, wood, copper, glass, gold", "metals and non-metals"),
    ("Mercury, Moon, Mars, Titan, Venus", "planets and moons"),
    ("violin, drum, flute, cello, trumpet", "string, wind and percussion instruments"),
    ("run, happy, quickly, table, sing", "verbs, nouns, adjectives and adverbs"),
    ("spider, ant, beetle, scorpion, bee", "insects and non-insects"),
    ("ice, steam, water, fog, snow", "solid, liquid and gas"),
    ("oak, rose, pine, tulip, maple", "trees and flowers"),
    ("penguin, ostrich, eagle, sparrow, kiwi", "birds that fly and birds that cannot"),
    ("milk, cheese, bread, yogurt, rice", "dairy foods and other foods"),
    ("cotton, nylon, wool, polyester, silk", "natural and synthetic fibres"),
]

MATH_ITEMS = [("pencils", 0.5), ("notebooks", 2.5), ("apples", 0.4), ("tickets", 7.0), ("stamps", 1.2),
              ("bottles of water", 1.5), ("sandwiches", 4.0), ("candles", 3.0)]
MATH_NAMES = ["Ana", "Ben", "Chen", "Dara", "Eli", "Farah", "Gus", "Hana", "Ivo", "Jia", "Kofi", "Lena"]


def _math_prompts(rng: random.Random) -> list[str]:
    """Word problems with generated numbers (answers are for the model to work out)."""
    out = []
    for _ in range(60):
        item, price = rng.choice(MATH_ITEMS)
        n, name = rng.randint(3, 24), rng.choice(MATH_NAMES)
        note = rng.choice([20, 50, 100])
        out.append(f"{name} buys {n} {item} at ${price:.2f} each and pays with a ${note} note. How much change "
                   f"does {name} get? Show your working.")
    for _ in range(40):
        speed, hours = rng.randint(30, 110), rng.choice([1.5, 2, 2.5, 3, 4])
        out.append(f"A car travels at {speed} km/h for {hours} hours. How far does it go? Explain each step.")
    for _ in range(40):
        pct, base = rng.choice([10, 15, 20, 25, 30, 40]), rng.randint(20, 400)
        out.append(f"A jacket costs ${base}. It is on sale for {pct}% off. What is the sale price?")
    for _ in range(30):
        w, h = rng.randint(2, 20), rng.randint(2, 20)
        out.append(f"A garden is {w} metres long and {h} metres wide. What are its area and its perimeter?")
    for _ in range(30):
        a, b = rng.randint(2, 9), rng.randint(2, 9)
        people = rng.randint(2, 8)
        out.append(f"A recipe for {a} people needs {b} eggs. How many eggs are needed for {a * people} people?")
    for _ in range(30):
        age, diff = rng.randint(5, 15), rng.randint(2, 30)
        name = rng.choice(MATH_NAMES)
        out.append(f"{name} is {age} years old. {name}'s aunt is {diff} years older than twice {name}'s age. How "
                   "old is the aunt?")
    for _ in range(30):
        total, k = rng.randint(12, 90), rng.randint(2, 6)
        out.append(f"{total} marbles are shared equally among {k} children. How many does each child get, and how "
                   "many are left over?")
    return out


def build_prompts() -> list[dict]:
    """The full built-in prompt set, in its fixed shuffled order."""
    rng = random.Random(SHUFFLE_SEED)
    rows: list[tuple[str, str]] = []

    def some(templates, k):
        return rng.sample(templates, k)

    for x in CONCEPTS:
        rows += [(kind, t.format(x=x)) for kind, t in some(CONCEPT_TEMPLATES, 6)]
    for x in ACTIVITIES:
        rows += [(kind, t.format(x=x)) for kind, t in some(ACTIVITY_TEMPLATES, 4)]
    for x in SUBJECTS:
        rows += [(kind, t.format(x=x)) for kind, t in some(SUBJECT_TEMPLATES, 4)]
    for a, b in PAIRS:
        rows += [(kind, t.format(a=a, b=b)) for kind, t in some(PAIR_TEMPLATES, 2)]
    for x in PASSAGES:
        rows += [(kind, t.format(x=x)) for kind, t in PASSAGE_TEMPLATES]
    for x in OPENINGS:
        rows += [(kind, t.format(x=x)) for kind, t in OPENING_TEMPLATES]
    rows += [("question", q) for q in FACT_QUESTIONS]
    for x in SITUATIONS:
        rows += [(kind, t.format(X=x[0].upper() + x[1:])) for kind, t in some(SITUATION_TEMPLATES, 2)]
    for who in EMAIL_RECIPIENTS:
        rows += [("instruction", f"Write a short, polite email to {who} {why}.")
                 for why in rng.sample(EMAIL_PURPOSES, 4)]
    for p in PRODUCTS:
        rows += [("instruction", f"Write a short product description for {p}."),
                 ("instruction", f"Write a customer review of {p}, mentioning one good point and one problem.")]
    for o in OCCASIONS:
        rows += [("creative", f"Write a short speech for {o}."),
                 ("creative", f"Write a greeting card message for {o}.")]
    for x in BRAINSTORMS:
        rows += [(kind, t.format(x=x)) for kind, t in BRAINSTORM_TEMPLATES]
    for x in WORDS:
        rows += [(kind, t.format(x=x)) for kind, t in some(WORD_TEMPLATES, 1)]
    for task in CODE_TASKS:
        for lang in rng.sample(CODE_LANGUAGES, 2):
            rows.append(("code", f"Write a {lang} function that {task}, and explain how it works."))
    for x in CODE_SNIPPETS:
        rows += [(kind, t.format(x=x)) for kind, t in CODE_SNIPPET_TEMPLATES]
    for items, groups in CLASSIFY:
        rows += [("instruction", f"Sort these into {groups}: {items}. Explain each choice."),
                 ("instruction", f"Which one does not belong, and why? {items}")]
    rows += [("math", p) for p in _math_prompts(rng)]

    seen, unique = set(), []
    for kind, prompt in rows:
        if prompt not in seen:
            seen.add(prompt)
            unique.append((kind, prompt))
    rng.shuffle(unique)
    counters: dict[str, int] = {}
    out = []
    for kind, prompt in unique:
        counters[kind] = counters.get(kind, 0) + 1
        out.append({"id": f"{kind}-{counters[kind]:04d}", "kind": kind, "prompt": prompt})
    return out


def write(path: Path = OUT_FILE) -> int:
    prompts = build_prompts()
    path.write_text("".join(json.dumps(p, ensure_ascii=False) + "\n" for p in prompts), encoding="utf-8")
    return len(prompts)


if __name__ == "__main__":
    print(f"{write()} prompts -> {OUT_FILE}")
