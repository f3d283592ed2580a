"""Word lists for the synthetic sentence grammar in :mod:`jax_whisper.synthetic.grammar`.

Everything is lower-case and spelled as a transcript should be (numbers as words, no punctuation,
no apostrophes). Irregular forms are written out rather than derived so that nothing is guessed.
"""

from __future__ import annotations

# --- people and names --------------------------------------------------------------------------------

NAMES = (
    "anna ben chris david emma frank grace henry jack kate lily mark nina oliver paul rose sam tom lucy "
    "peter sarah james mary john alice bob linda mike susan daniel eric helen julia laura max sophie "
    "adam amy leo maria"
).split()

# noun "singular[/plural]": a plural is only written out when adding "s" would be wrong
PEOPLE = (
    "man/men woman/women child/children boy girl baby/babies doctor teacher driver farmer nurse student "
    "friend neighbor mother father sister brother king queen cook baker pilot artist singer writer "
    "player worker guest visitor stranger customer captain soldier uncle aunt grandmother grandfather "
    "family/families lady/ladies"
).split()

ANIMALS = (
    "dog cat bird horse cow fish/fish mouse/mice duck sheep/sheep rabbit fox/foxes bear lion frog pig "
    "goat chicken owl wolf/wolves monkey"
).split()

# --- things -----------------------------------------------------------------------------------------

OBJECTS = (
    "book box/boxes cup bag key ball chair table phone pen hat coat shoe glass/glasses bottle plate "
    "knife/knives spoon lamp clock picture map ticket toy basket blanket bucket candle coin ring rope "
    "umbrella camera radio watch/watches bell brush/brushes pencil window door bed computer jacket "
    "shirt wallet mirror pillow"
).split()

# things that can be read or written
TEXTS = "letter note story/stories message card newspaper list poem song report".split()

FOODS = (
    "apple cake egg orange banana sandwich/sandwiches cookie potato/potatoes tomato/tomatoes carrot pie "
    "salad pizza lemon pear cherry/cherries onion peach/peaches biscuit sausage"
).split()

# uncountable: no "a", no plural
MASS_FOODS = "bread cheese rice butter honey soup chicken fruit chocolate pasta meat".split()
DRINKS = "water milk tea coffee juice lemonade".split()

PLACES = (
    "park school house kitchen garden river beach market station library office church city/cities "
    "village forest farm hospital hotel shop street bridge hill lake island room road field airport "
    "museum restaurant bank castle cinema mountain"
).split()

VEHICLES = "car bus/buses train boat bike truck plane ship taxi".split()

# --- adjectives, by kind; the order of the kinds is English adjective order ----------------------------

ADJ_OPINION = (
    "beautiful pretty ugly strange funny lovely nice nasty wonderful terrible famous lucky special perfect"
).split()
ADJ_SIZE = "big small little tall short long tiny huge large heavy light".split()
ADJ_AGE = "old new young ancient modern".split()
ADJ_COLOR = "red blue green yellow black white brown orange purple pink gray golden silver".split()
ADJ_MATERIAL = "wooden plastic metal paper woolen".split()
ADJ_STATE = "clean dirty empty full broken wet dry hot cold warm quiet loud soft hard bright dark".split()
ADJ_MOOD = (
    "happy sad tired hungry angry brave kind friendly clever lazy busy strong weak sick nervous "
    "proud calm sleepy thirsty polite rude honest gentle"
).split()
ADJ_TASTE = "fresh sweet sour ripe delicious salty spicy tasty".split()

# --- verbs: (base, third person singular, past, present participle) ----------------------------------


def _forms(spec: str) -> list[tuple[str, str, str, str]]:
    return [tuple(line.split()) for line in spec.strip().splitlines()]


INTRANSITIVE = _forms(
    """
    sleep sleeps slept sleeping
    run runs ran running
    walk walks walked walking
    sing sings sang singing
    dance dances danced dancing
    laugh laughs laughed laughing
    cry cries cried crying
    smile smiles smiled smiling
    swim swims swam swimming
    jump jumps jumped jumping
    wait waits waited waiting
    talk talks talked talking
    work works worked working
    play plays played playing
    sit sits sat sitting
    arrive arrives arrived arriving
    shout shouts shouted shouting
    rest rests rested resting
    listen listens listened listening
    travel travels traveled traveling
    fall falls fell falling
    hide hides hid hiding
    climb climbs climbed climbing
    stay stays stayed staying
    win wins won winning
    lose loses lost losing
    cough coughs coughed coughing
    whisper whispers whispered whispering
    study studies studied studying
    relax relaxes relaxed relaxing
    """
)

# transitive verbs, grouped by what they take as an object
VERBS_OBJECT = _forms(
    """
    find finds found finding
    take takes took taking
    carry carries carried carrying
    hold holds held holding
    drop drops dropped dropping
    open opens opened opening
    close closes closed closing
    buy buys bought buying
    sell sells sold selling
    bring brings brought bringing
    want wants wanted wanting
    need needs needed needing
    keep keeps kept keeping
    break breaks broke breaking
    fix fixes fixed fixing
    clean cleans cleaned cleaning
    wash washes washed washing
    paint paints painted painting
    lose loses lost losing
    move moves moved moving
    push pushes pushed pushing
    pull pulls pulled pulling
    throw throws threw throwing
    catch catches caught catching
    use uses used using
    borrow borrows borrowed borrowing
    forget forgets forgot forgetting
    hide hides hid hiding
    check checks checked checking
    fill fills filled filling
    """
)
VERBS_TEXT = _forms(
    """
    read reads read reading
    write writes wrote writing
    send sends sent sending
    finish finishes finished finishing
    print prints printed printing
    """
)
VERBS_FOOD = _forms(
    """
    eat eats ate eating
    cook cooks cooked cooking
    buy buys bought buying
    like likes liked liking
    want wants wanted wanting
    cut cuts cut cutting
    share shares shared sharing
    taste tastes tasted tasting
    order orders ordered ordering
    make makes made making
    bake bakes baked baking
    """
)
VERBS_DRINK = _forms(
    """
    drink drinks drank drinking
    pour pours poured pouring
    spill spills spilled spilling
    heat heats heated heating
    """
)
VERBS_BEING = _forms(
    """
    see sees saw seeing
    meet meets met meeting
    help helps helped helping
    call calls called calling
    visit visits visited visiting
    follow follows followed following
    watch watches watched watching
    hear hears heard hearing
    love loves loved loving
    miss misses missed missing
    thank thanks thanked thanking
    ask asks asked asking
    teach teaches taught teaching
    feed feeds fed feeding
    wake wakes woke waking
    chase chases chased chasing
    remember remembers remembered remembering
    invite invites invited inviting
    """
)
VERBS_PLACE = _forms(
    """
    visit visits visited visiting
    leave leaves left leaving
    clean cleans cleaned cleaning
    love loves loved loving
    reach reaches reached reaching
    explore explores explored exploring
    """
)
VERBS_VEHICLE = _forms(
    """
    drive drives drove driving
    ride rides rode riding
    stop stops stopped stopping
    park parks parked parking
    wash washes washed washing
    """
)
# "give the girl a cup", "show him the map"
DITRANSITIVE = _forms(
    """
    give gives gave giving
    show shows showed showing
    bring brings brought bringing
    send sends sent sending
    hand hands handed handing
    offer offers offered offering
    """
)
# motion verbs followed by "to the <place>"
MOTION = _forms(
    """
    go goes went going
    walk walks walked walking
    run runs ran running
    drive drives drove driving
    return returns returned returning
    hurry hurries hurried hurrying
    come comes came coming
    move moves moved moving
    """
)

MODALS = "can could should must might will would".split()

# --- adverbials --------------------------------------------------------------------------------------

MANNER = (
    "quickly slowly quietly loudly carefully happily sadly softly gently easily suddenly finally "
    "together again badly politely angrily patiently proudly calmly"
).split()
FREQUENCY = "always never often sometimes usually rarely".split()
PLACE_ADVERBS = "here there outside inside upstairs downstairs away home".split()

DAYS = "monday tuesday wednesday thursday friday saturday sunday".split()
MONTHS = "january february march april may june july august september october november december".split()
# multi-word time expressions, spoken as written
TIMES = [
    "today",
    "yesterday",
    "tomorrow",
    "tonight",
    "now",
    "later",
    "soon",
    "early",
    "late",
    "this morning",
    "this afternoon",
    "this evening",
    "last night",
    "last week",
    "last year",
    "next week",
    "next month",
    "next year",
    "every day",
    "every morning",
    "every weekend",
    "in the morning",
    "in the evening",
    "at night",
    "at noon",
    "after lunch",
    "before dinner",
    "after school",
    "before breakfast",
    "during the storm",
    "over the weekend",
]
SEASONS = "spring summer autumn winter".split()

# --- prepositions ------------------------------------------------------------------------------------

LOCATIVE = "in on under near behind beside inside outside by above below across along around".split()
COMPANION = "with without".split()
SUBORDINATORS = "when because after before while if although until since".split()

# --- numbers -----------------------------------------------------------------------------------------

ONES = "one two three four five six seven eight nine".split()
TEENS = "ten eleven twelve thirteen fourteen fifteen sixteen seventeen eighteen nineteen".split()
TENS = "twenty thirty forty fifty sixty seventy eighty ninety".split()
UNITS = "minutes hours days weeks dollars miles pages steps years".split()

# --- closed classes ----------------------------------------------------------------------------------

SUBJECT_PRONOUNS = {  # pronoun: (person, plural)
    "i": (1, False),
    "you": (2, True),
    "he": (3, False),
    "she": (3, False),
    "we": (1, True),
    "they": (3, True),
    "it": (3, False),
}
OBJECT_PRONOUNS = "me you him her us them".split()
POSSESSIVES = "my your his her our their".split()
FIXED_PHRASES = [  # short everyday sentences that do not fit the templates
    "good morning",
    "good night",
    "thank you",
    "see you later",
    "what time is it",
    "how are you",
    "i am sorry",
    "nice to meet you",
    "excuse me",
    "good luck",
    "happy birthday",
    "of course",
    "not yet",
    "me too",
    "welcome home",
    "what is your name",
    "where are you going",
    "i do not know",
    "never mind",
    "take care",
    "hurry up",
    "sit down",
    "come in",
    "wake up",
    "calm down",
    "look out",
    "wait a minute",
    "let me see",
    "that is fine",
    "how much is it",
]

# words that only the sentence templates themselves use
FUNCTION_WORDS = """
a an the this that these those some every another no more many few all lot of to from with by into through
across around next door and but so who what which where why when how much very too really quite still almost
is am are was were be not do does did will there it takes took years old half past quarter noon midnight
favorite season birthday party holiday exam wedding concert shop bank library museum school closed open busy
crowded late fast slow expensive cheap strong secret important boring please let us never always said think
thinks knew hope hopes told me believe believes heard forgot cost costs leaves left arrives arrived stops
stopped opens opened closes have has had bought found saw for read wrote printed walk take run climb color
hundred careful polite patient ready bowl piece plate hat coat bag jacket collar gray village city farm hotel
market home car bus train bike taxi
""".split()
