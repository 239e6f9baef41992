//! A built-in corpus: procedurally generated children's stories in plain ASCII, so that
//! training can start with no download.
//!
//! Each story draws a cast (a child or an animal, a friend, a grown-up), a place with its own
//! landmarks, an object, a time and weather, then follows one of several plot templates
//! through a simple arc: setup, a problem, a turn, a resolution and an ending line. Every
//! beat has several phrasings, dialogue included, so the text has a few thousand distinct
//! sentences' worth of structure over a vocabulary of several hundred words: enough to give a
//! small model something to learn, small enough that a 512-piece BPE covers it with whole
//! words. Everything is drawn from [`Rng`], so a seed fixes the corpus.

use crate::util::rng::Rng;

/// Picks one element uniformly.
fn pick<'a, T>(rng: &mut Rng, xs: &'a [T]) -> &'a T {
    &xs[rng.below(xs.len() as u64) as usize]
}

/// Two different elements (`xs` has at least two).
fn pick2<'a, T>(rng: &mut Rng, xs: &'a [T]) -> (&'a T, &'a T) {
    let i = rng.below(xs.len() as u64) as usize;
    let j = (i + 1 + rng.below(xs.len() as u64 - 1) as usize) % xs.len();
    (&xs[i], &xs[j])
}

/// True with probability `p`.
fn chance(rng: &mut Rng, p: f32) -> bool {
    rng.next_f32() < p
}

/// "a" or "an" before `word`.
fn a(word: &str) -> String {
    let first = word.chars().next().unwrap_or('x').to_ascii_lowercase();
    if "aeiou".contains(first) {
        format!("an {word}")
    } else {
        format!("a {word}")
    }
}

/// First letter in upper case.
fn cap(s: &str) -> String {
    let mut c = s.chars();
    match c.next() {
        Some(f) => f.to_ascii_uppercase().to_string() + c.as_str(),
        None => String::new(),
    }
}

const GIRLS: &[&str] = &[
    "Lily", "Mia", "Anna", "Sue", "Lucy", "Zoe", "Emma", "Ella", "Sara", "Amy", "Kate", "Rose",
    "Daisy", "Molly", "Lola", "Nina", "Ruby", "Sophie", "Grace", "Ivy", "Jane", "Luna", "Maya",
    "Olive", "Tina", "Hannah", "Kim", "Ava", "Chloe", "Bella", "Penny", "Jill",
];
const BOYS: &[&str] = &[
    "Tom", "Ben", "Sam", "Max", "Tim", "Jack", "Leo", "Joe", "Bob", "Finn", "Jake", "Luke", "Noah",
    "Oscar", "Pete", "Ryan", "Toby", "Will", "Alex", "Dan", "Eli", "Hugo", "Jim", "Kai", "Liam",
    "Milo", "Ned", "Owen", "Zack", "Billy", "Timmy", "Andy",
];
/// (animal, sound it makes, an adjective that suits it)
const ANIMALS: &[(&str, &str, &str)] = &[
    ("cat", "Meow", "fluffy"),
    ("dog", "Woof", "friendly"),
    ("bunny", "Squeak", "soft"),
    ("bird", "Tweet", "little"),
    ("fox", "Yip", "clever"),
    ("bear", "Grr", "big"),
    ("mouse", "Squeak", "tiny"),
    ("duck", "Quack", "yellow"),
    ("frog", "Ribbit", "green"),
    ("owl", "Hoot", "wise"),
    ("pig", "Oink", "pink"),
    ("lamb", "Baa", "woolly"),
    ("turtle", "Hmm", "slow"),
    ("squirrel", "Chirp", "busy"),
    ("puppy", "Woof", "playful"),
    ("kitten", "Mew", "small"),
    ("horse", "Neigh", "strong"),
    ("cow", "Moo", "gentle"),
    ("goat", "Maa", "funny"),
    ("hen", "Cluck", "brown"),
    ("monkey", "Ooh", "silly"),
    ("elephant", "Toot", "big"),
    ("lion", "Roar", "brave"),
    ("deer", "Hmm", "quiet"),
    ("hedgehog", "Sniff", "prickly"),
    ("penguin", "Honk", "happy"),
];
const KID_ADJ: &[&str] = &[
    "little", "happy", "kind", "brave", "shy", "curious", "silly", "clever", "gentle", "playful",
    "cheerful", "busy", "sweet", "smart", "good", "small",
];
const ADULTS: &[(&str, bool)] = &[
    ("Mom", false),
    ("Dad", true),
    ("Grandma", false),
    ("Grandpa", true),
    ("Aunt May", false),
    ("Uncle Joe", true),
];

/// A place: its name, spots in it where something can be, and what one does there.
struct Place {
    name: &'static str,
    spots: &'static [&'static str],
    sights: &'static [&'static str],
    activity: &'static [&'static str],
}

const PLACES: &[Place] = &[
    Place {
        name: "the park",
        spots: &[
            "under the slide",
            "behind the big tree",
            "near the pond",
            "by the swings",
            "under a bench",
            "in the sandbox",
        ],
        sights: &[
            "the green grass",
            "the tall trees",
            "the ducks on the pond",
            "children on the swings",
        ],
        activity: &[
            "play on the swings",
            "go down the slide",
            "run on the grass",
            "feed the ducks",
        ],
    },
    Place {
        name: "the forest",
        spots: &[
            "under an old log",
            "behind a big rock",
            "near the little stream",
            "under a bush",
            "in a pile of leaves",
            "by a tall pine tree",
        ],
        sights: &[
            "the tall trees",
            "the singing birds",
            "the little stream",
            "red mushrooms",
        ],
        activity: &[
            "look for pine cones",
            "listen to the birds",
            "walk on the path",
            "jump over the stream",
        ],
    },
    Place {
        name: "the beach",
        spots: &[
            "under the sand",
            "behind a big rock",
            "near the water",
            "by the old boat",
            "in a tide pool",
            "under a towel",
        ],
        sights: &[
            "the blue sea",
            "the big waves",
            "white shells",
            "seagulls in the sky",
        ],
        activity: &[
            "build a sand castle",
            "look for shells",
            "splash in the waves",
            "dig in the sand",
        ],
    },
    Place {
        name: "the garden",
        spots: &[
            "under the roses",
            "behind the fence",
            "near the apple tree",
            "by the water can",
            "in the flower bed",
            "under a big leaf",
        ],
        sights: &[
            "the pretty flowers",
            "the busy bees",
            "the red apples",
            "the green beans",
        ],
        activity: &[
            "water the flowers",
            "pick some apples",
            "chase the butterflies",
            "dig in the dirt",
        ],
    },
    Place {
        name: "the farm",
        spots: &[
            "in the barn",
            "behind the hay",
            "near the fence",
            "by the big tractor",
            "in the field",
            "under the wagon",
        ],
        sights: &[
            "the red barn",
            "the cows in the field",
            "the hens and chicks",
            "the big tractor",
        ],
        activity: &[
            "feed the hens",
            "ride on the tractor",
            "jump in the hay",
            "pet the cows",
        ],
    },
    Place {
        name: "the lake",
        spots: &[
            "near the dock",
            "under the willow tree",
            "by the reeds",
            "behind a rock",
            "in the boat",
            "on the sandy shore",
        ],
        sights: &[
            "the calm water",
            "the little fish",
            "the white swans",
            "the wooden dock",
        ],
        activity: &[
            "throw stones in the water",
            "watch the fish",
            "sit on the dock",
            "row a boat",
        ],
    },
    Place {
        name: "the meadow",
        spots: &[
            "in the tall grass",
            "under a daisy",
            "behind a hill",
            "near the old fence",
            "by a big stone",
            "under a tree",
        ],
        sights: &[
            "the yellow flowers",
            "the butterflies",
            "the soft grass",
            "the blue sky",
        ],
        activity: &[
            "pick flowers",
            "roll down the hill",
            "chase the butterflies",
            "lie in the grass",
        ],
    },
    Place {
        name: "the backyard",
        spots: &[
            "under the porch",
            "behind the shed",
            "near the sandbox",
            "by the fence",
            "in the grass",
            "under the table",
        ],
        sights: &[
            "the green grass",
            "the little shed",
            "the bird house",
            "the swing",
        ],
        activity: &[
            "play catch",
            "swing on the swing",
            "blow bubbles",
            "play hide and seek",
        ],
    },
    Place {
        name: "the playground",
        spots: &[
            "under the slide",
            "behind the climbing frame",
            "near the gate",
            "by the seesaw",
            "in the sandbox",
            "under the steps",
        ],
        sights: &[
            "the big slide",
            "the seesaw",
            "the monkey bars",
            "other kids playing",
        ],
        activity: &[
            "go down the slide",
            "play on the seesaw",
            "climb the monkey bars",
            "play tag",
        ],
    },
    Place {
        name: "the kitchen",
        spots: &[
            "under the table",
            "behind the chair",
            "near the oven",
            "in a drawer",
            "on a high shelf",
            "by the door",
        ],
        sights: &[
            "the warm oven",
            "the big pots",
            "the cookie jar",
            "the fruit bowl",
        ],
        activity: &[
            "bake cookies",
            "make a cake",
            "help with dinner",
            "mix the dough",
        ],
    },
    Place {
        name: "the library",
        spots: &[
            "under a desk",
            "behind the shelf",
            "near the big window",
            "by the soft chair",
            "in a basket",
            "on the top shelf",
        ],
        sights: &[
            "the tall shelves",
            "the picture books",
            "the quiet room",
            "the big map",
        ],
        activity: &[
            "read a book",
            "look at pictures",
            "find a story",
            "sit and listen",
        ],
    },
    Place {
        name: "the hill",
        spots: &[
            "behind a rock",
            "under a small tree",
            "near the top",
            "by the path",
            "in a hole",
            "under some leaves",
        ],
        sights: &[
            "the whole town",
            "the blue sky",
            "the soft clouds",
            "the windy grass",
        ],
        activity: &[
            "fly a kite",
            "roll down the grass",
            "look at the clouds",
            "climb to the top",
        ],
    },
];

/// Things a story can be about; a look from [`LOOKS`] goes before each.
const OBJECTS: &[&str] = &[
    "ball",
    "kite",
    "doll",
    "toy car",
    "teddy bear",
    "boat",
    "book",
    "hat",
    "scarf",
    "balloon",
    "drum",
    "truck",
    "shell",
    "ring",
    "box",
    "cup",
    "crayon",
    "bucket",
    "spoon",
    "sock",
    "key",
    "whistle",
    "flag",
    "blanket",
    "robot",
    "train",
    "puzzle",
    "stone",
    "feather",
    "bell",
];
const LOOKS: &[&str] = &[
    "red", "blue", "green", "yellow", "pink", "purple", "orange", "white", "shiny", "big", "small",
    "new", "old", "soft", "bright", "special", "favorite", "little", "round", "pretty",
];
const TIMES: &[&str] = &[
    "One day",
    "One sunny day",
    "One morning",
    "One warm afternoon",
    "One cold winter day",
    "One rainy morning",
    "One windy day",
    "One spring morning",
    "Early one morning",
    "One summer day",
    "Last Saturday",
    "One bright day",
    "One evening",
];
const HAPPY: &[&str] = &["happy", "glad", "excited", "joyful", "cheerful", "proud"];
const SAD: &[&str] = &["sad", "upset", "unhappy", "worried", "lonely", "gloomy"];
const SCARED: &[&str] = &["scared", "afraid", "frightened", "nervous", "worried"];
const MAD: &[&str] = &["angry", "mad", "cross", "grumpy", "upset"];
const WALK: &[&str] = &[
    "walked", "ran", "skipped", "hopped", "went", "hurried", "raced",
];
const LOOKED: &[&str] = &[
    "looked",
    "searched",
    "looked and looked",
    "hunted",
    "peeked",
];
const GOOD: &[&str] = &[
    "great",
    "wonderful",
    "lovely",
    "fun",
    "nice",
    "happy",
    "special",
    "perfect",
];
const FOODS: &[&str] = &[
    "cookies",
    "apples",
    "sandwiches",
    "cake",
    "berries",
    "bread",
    "carrots",
    "muffins",
    "cheese",
    "grapes",
    "pie",
    "soup",
];
/// (animal, what is wrong with it, how it leaves)
const HURT_ANIMALS: &[(&str, &str, &str)] = &[
    ("bird", "had a hurt wing", "flew"),
    ("kitten", "had a thorn in its paw", "ran"),
    ("duckling", "had lost its mother", "waddled"),
    ("puppy", "had a sore leg", "ran"),
    ("bunny", "had its foot stuck under a branch", "hopped"),
    ("turtle", "was stuck on its back", "crawled"),
    ("squirrel", "had its tail caught in a fence", "ran"),
    ("frog", "was stuck in a bucket", "hopped"),
    ("lamb", "was caught in a bush", "ran"),
    ("hedgehog", "was lost and cold", "walked"),
];
const FEARS: &[(&str, &str)] = &[
    ("the dark", "the room was very dark"),
    ("the thunder", "the thunder went boom"),
    ("the big dog next door", "the big dog barked loudly"),
    ("the deep water", "the water looked very deep"),
    ("the tall slide", "the slide looked very tall"),
    ("the loud wind", "the wind howled outside"),
    ("the shadows", "strange shadows moved on the wall"),
    ("the first day of school", "there were so many new faces"),
];
const SKILLS: &[(&str, &str, &str)] = &[
    (
        "ride a bike",
        "fell off the bike",
        "pedaled all the way down the path",
    ),
    ("swim", "sank and splashed", "swam across the pool"),
    (
        "climb the big tree",
        "slipped down",
        "reached the highest branch",
    ),
    (
        "fly a kite",
        "watched the kite fall down",
        "made the kite fly high in the sky",
    ),
    (
        "bake a cake",
        "burned the cake",
        "made a tall and yummy cake",
    ),
    ("tie a shoe", "made a big knot", "tied a perfect bow"),
    (
        "jump rope",
        "tripped on the rope",
        "jumped ten times in a row",
    ),
    ("whistle", "only blew air", "whistled a happy song"),
    (
        "paint a picture",
        "spilled the paint",
        "painted a beautiful picture",
    ),
    (
        "catch a ball",
        "dropped the ball",
        "caught the ball with both hands",
    ),
];
const GIFTS: &[&str] = &[
    "a card with a big heart",
    "a necklace of beads",
    "a painting of a sun",
    "a crown of flowers",
    "a small clay pot",
    "a picture of the family",
    "a box of cookies",
    "a paper bird",
];
const OCCASIONS: &[&str] = &[
    "birthday",
    "special day",
    "party",
    "first day at the new house",
];
const DISCOVERIES: &[(&str, &str)] = &[
    ("a tiny door in a tree", "a family of mice having tea"),
    ("an old map", "a box full of shiny buttons"),
    ("a narrow path", "a pond full of singing frogs"),
    ("a bird nest", "three little eggs that began to hatch"),
    ("a glowing light", "a tiny firefly who had lost its way"),
    ("a hidden gate", "a secret garden with giant flowers"),
    ("a trail of footprints", "a sleepy bear cub"),
    ("a bottle with a note", "a message from a friend far away"),
];
const BREAKABLES: &[&str] = &[
    "vase",
    "lamp",
    "plate",
    "cup",
    "toy plane",
    "window",
    "jar",
    "clock",
    "sand castle",
];
const ENDINGS: &[&str] = &[
    "From that day on, {A} and {B} were the best of friends.",
    "It was the best day ever.",
    "{A} smiled all the way home.",
    "That night, {A} went to sleep with a big smile.",
    "And they all lived happily ever after.",
    "{A} would always remember that day.",
    "The sun went down, and it was time to go home.",
    "{A} could not wait to come back tomorrow.",
    "{A} and {B} hugged and said goodbye until tomorrow.",
    "The end.",
    "It was a day full of love and fun.",
];

/// Someone in the story, with the pronouns that go with them.
#[derive(Clone)]
struct Who {
    /// how the text names them after the introduction: "Lily", "Max"
    name: String,
    /// "girl", "boy", "cat"
    kind: String,
    he: &'static str,
    him: &'static str,
    his: &'static str,
    /// the animal's sound, for dialogue
    sound: Option<&'static str>,
    adj: String,
}

impl Who {
    fn draw(rng: &mut Rng, avoid: &str) -> Who {
        let girl = chance(rng, 0.5);
        let name = loop {
            let n = if girl {
                *pick(rng, GIRLS)
            } else {
                *pick(rng, BOYS)
            };
            if n != avoid {
                break n.to_string();
            }
        };
        let (he, him, his) = if girl {
            ("she", "her", "her")
        } else {
            ("he", "him", "his")
        };
        if chance(rng, 0.35) {
            let (kind, sound, adj) = *pick(rng, ANIMALS);
            let adj = if chance(rng, 0.5) {
                adj.to_string()
            } else {
                pick(rng, KID_ADJ).to_string()
            };
            Who {
                name,
                kind: kind.to_string(),
                he,
                him,
                his,
                sound: Some(sound),
                adj,
            }
        } else {
            Who {
                name,
                kind: if girl { "girl" } else { "boy" }.to_string(),
                he,
                him,
                his,
                sound: None,
                adj: pick(rng, KID_ADJ).to_string(),
            }
        }
    }

    /// "a little girl named Lily"
    fn intro(&self) -> String {
        format!("{} {} named {}", a(&self.adj), self.kind, self.name)
    }

    fn he_cap(&self) -> String {
        cap(self.he)
    }
}

/// Everything one story is about.
struct Cast {
    hero: Who,
    friend: Who,
    adult: &'static str,
    adult_he: &'static str,
    place: &'static Place,
    object: String,
    time: &'static str,
}

impl Cast {
    fn draw(rng: &mut Rng) -> Cast {
        let hero = Who::draw(rng, "");
        let friend = Who::draw(rng, &hero.name.clone());
        let &(adult, male) = pick(rng, ADULTS);
        let look = *pick(rng, LOOKS);
        let time = *pick(rng, TIMES);
        Cast {
            hero,
            friend,
            adult,
            adult_he: if male { "he" } else { "she" },
            place: pick(rng, PLACES),
            object: format!("{look} {}", pick(rng, OBJECTS)),
            time,
        }
    }
}

/// A story under construction: paragraphs of sentences.
struct Text {
    paragraphs: Vec<Vec<String>>,
}

impl Text {
    fn new() -> Text {
        Text {
            paragraphs: vec![Vec::new()],
        }
    }
    fn say(&mut self, s: String) {
        self.paragraphs.last_mut().unwrap().push(s);
    }
    fn paragraph(&mut self) {
        if !self.paragraphs.last().unwrap().is_empty() {
            self.paragraphs.push(Vec::new());
        }
    }
    fn finish(self) -> String {
        self.paragraphs
            .into_iter()
            .filter(|p| !p.is_empty())
            .map(|p| p.join(" "))
            .collect::<Vec<_>>()
            .join("\n\n")
    }
}

/// A line of dialogue: `"Words," said Lily.` or `Lily said, "Words."`. `words` ends in
/// `.`, `!` or `?`; the verb suits the punctuation.
fn quote(rng: &mut Rng, who: &str, words: &str) -> String {
    let verb = if words.ends_with('?') {
        "asked"
    } else if words.ends_with('!') {
        *pick(rng, &["said", "shouted", "cried", "called", "yelled"])
    } else {
        *pick(rng, &["said", "said", "said", "replied", "whispered"])
    };
    if chance(rng, 0.6) {
        let w = match words.strip_suffix('.') {
            Some(w) => format!("{w},"),
            None => words.to_string(),
        };
        format!("\"{w}\" {verb} {who}.")
    } else {
        format!("{who} {verb}, \"{words}\"")
    }
}

/// The opening: who, where, when.
/// `friend_known`: whether the plot lets the friend be introduced as an old friend.
fn setup(rng: &mut Rng, c: &Cast, t: &mut Text, friend_known: bool) {
    let (h, f, p) = (&c.hero, &c.friend, c.place);
    match rng.below(6) {
        0 => t.say(format!("Once upon a time, there was {}.", h.intro())),
        1 => t.say(format!("There once was {}.", h.intro())),
        2 => t.say(format!(
            "{} was {} {} who lived near {}.",
            h.name,
            a(&h.adj),
            h.kind,
            p.name
        )),
        3 => t.say(format!(
            "Once there was {} who loved {}.",
            h.intro(),
            p.name
        )),
        4 => t.say(format!(
            "In a little house by {} lived {}.",
            p.name,
            h.intro()
        )),
        _ => t.say(format!(
            "Once upon a time, in a small town, there lived {}.",
            h.intro()
        )),
    }
    match rng.below(6) {
        0 => t.say(format!(
            "{} liked to {} every day.",
            h.he_cap(),
            pick(rng, p.activity)
        )),
        1 => t.say(format!(
            "{} had {} that {} loved very much.",
            h.he_cap(),
            a(&c.object),
            h.he
        )),
        2 if friend_known => t.say(format!(
            "{}'s best friend was {}, {} {}.",
            h.name,
            f.name,
            a(&f.adj),
            f.kind
        )),
        3 if friend_known => t.say(format!(
            "{} loved to play with {} friend {}.",
            h.he_cap(),
            h.his,
            f.name
        )),
        4 => t.say(format!(
            "Every morning, {} said hello to {} and the sun.",
            h.he,
            pick(rng, p.sights)
        )),
        _ => {}
    }
}

fn lost_object(rng: &mut Rng, c: &Cast, t: &mut Text) {
    let (h, f, p) = (&c.hero, &c.friend, c.place);
    let spot = *pick(rng, p.spots);
    t.say(format!(
        "{}, {} took {} {} to {}.",
        c.time, h.name, h.his, c.object, p.name
    ));
    t.say(format!(
        "{} wanted to {} and play with it.",
        h.he_cap(),
        pick(rng, p.activity)
    ));
    t.paragraph();
    match rng.below(3) {
        0 => t.say(format!(
            "But when {} turned around, the {} was gone!",
            h.he, c.object
        )),
        1 => t.say(format!(
            "After a while, {} looked for {} {}, but it was not there.",
            h.he, h.his, c.object
        )),
        _ => t.say(format!(
            "Then a big wind came, and the {} was nowhere to be seen.",
            c.object
        )),
    }
    t.say(format!("{} felt very {}.", h.name, pick(rng, SAD)));
    match rng.below(3) {
        0 => t.say(format!("A little tear rolled down {} cheek.", h.his)),
        1 => t.say(format!(
            "It was {} favorite thing in the whole world.",
            h.his
        )),
        _ => {}
    }
    let line = pick(
        rng,
        &[
            "Where is my {}?",
            "Oh no, I lost my {}!",
            "Has anyone seen my {}?",
        ],
    )
    .replace("{}", &c.object);
    t.say(quote(rng, &h.name, &line));
    t.say(format!(
        "Just then, {} came by. {} saw that {} was {}.",
        f.name,
        f.he_cap(),
        h.name,
        pick(rng, SAD)
    ));
    let offer = *pick(
        rng,
        &[
            "Do not worry. I will help you look.",
            "Let us find it together!",
            "Two friends can look better than one.",
        ],
    );
    t.say(quote(rng, &f.name, offer));
    t.paragraph();
    t.say(format!(
        "They {} everywhere. They {} near {} and {}.",
        pick(rng, LOOKED),
        pick(rng, LOOKED),
        pick(rng, p.sights),
        pick(rng, p.spots)
    ));
    if chance(rng, 0.5) {
        t.say(format!(
            "It was getting late, and {} almost gave up.",
            h.name
        ));
    }
    let shout = match f.sound {
        Some(sound) => format!("{sound}! Look over there!"),
        None => "Look over there!".to_string(),
    };
    t.say(quote(rng, &f.name, &shout));
    t.say(format!("The {} was {}!", c.object, spot));
    match rng.below(3) {
        0 => t.say(format!(
            "{} picked it up and gave {} a big hug. \"Thank you, {}!\"",
            h.name, f.name, f.name
        )),
        1 => t.say(format!(
            "{} jumped up and down. \"You found it! You are the best friend ever!\"",
            h.name
        )),
        _ => t.say(format!(
            "{} held the {} tight and smiled at {}.",
            h.name, c.object, f.name
        )),
    }
    if chance(rng, 0.5) {
        t.say(format!(
            "After that, {} always kept {} {} close.",
            h.name, h.his, c.object
        ));
    }
}

fn sharing(rng: &mut Rng, c: &Cast, t: &mut Text) {
    let (h, f, p) = (&c.hero, &c.friend, c.place);
    t.say(format!(
        "{}, {} and {} went to {}.",
        c.time, h.name, f.name, p.name
    ));
    t.say(format!(
        "{} brought {} {} {}.",
        h.name,
        h.his,
        c.object,
        pick(rng, &["along", "to play with", "in a bag"])
    ));
    t.paragraph();
    let ask = pick(
        rng,
        &[
            "Can I play with your {}?",
            "May I have a turn with the {}?",
            "Can I hold the {} too?",
        ],
    )
    .replace("{}", &c.object);
    t.say(quote(rng, &f.name, &ask));
    let no = *pick(
        rng,
        &[
            "No, it is mine!",
            "No! I want it!",
            "Not now, it is my turn!",
        ],
    );
    t.say(quote(rng, &h.name, no));
    match rng.below(2) {
        0 => t.say(format!(
            "{} pulled the {} and {} pulled it back.",
            f.name, c.object, h.name
        )),
        _ => t.say(format!(
            "{} held the {} close and turned away.",
            h.name, c.object
        )),
    }
    t.say(format!(
        "Both of them were {}, and {} started to cry.",
        pick(rng, MAD),
        f.name
    ));
    t.paragraph();
    match rng.below(2) {
        0 => {
            t.say(format!("{} heard the noise and came over.", c.adult));
            let advice = format!(
                "Why don't you take turns? {} can play first, and then {}.",
                h.name, f.name
            );
            t.say(quote(rng, c.adult, &advice));
            t.say(format!(
                "{} thought about it. Then {} gave the {} to {}.",
                h.name, h.he, c.object, f.name
            ));
        }
        _ => {
            t.say(format!(
                "{} looked at {}'s sad face. {} did not feel good inside.",
                h.name,
                f.name,
                h.he_cap()
            ));
            t.say(quote(
                rng,
                &h.name,
                "I am sorry. Here, you can play with it first.",
            ));
        }
    }
    t.say(quote(rng, &f.name, "Thank you! You are a good friend."));
    t.say(format!(
        "They took turns all afternoon and had a {} time. {} was {} {} had shared.",
        pick(rng, GOOD),
        h.name,
        pick(rng, HAPPY),
        h.he
    ));
}

fn fear(rng: &mut Rng, c: &Cast, t: &mut Text) {
    let (h, f) = (&c.hero, &c.friend);
    let &(thing, scene) = pick(rng, FEARS);
    t.say(format!(
        "{} was {} of {}.",
        h.name,
        pick(rng, SCARED),
        thing
    ));
    t.say(format!(
        "{}, {} and {} {}.",
        c.time,
        scene,
        h.name,
        pick(
            rng,
            &[
                "hid under a blanket",
                "did not want to move",
                "held on to a teddy bear",
                "started to shake"
            ]
        )
    ));
    let line = *pick(
        rng,
        &[
            "I am scared. I do not like this.",
            "Help! I am too scared!",
            "Can someone stay with me?",
        ],
    );
    t.say(quote(rng, &h.name, line));
    t.paragraph();
    let helper = if chance(rng, 0.5) {
        c.adult.to_string()
    } else {
        f.name.clone()
    };
    t.say(format!("{} sat down next to {}.", helper, h.name));
    t.say(quote(
        rng,
        &helper,
        "It is okay to be scared. I am right here with you.",
    ));
    match rng.below(3) {
        0 => {
            t.say(quote(
                rng,
                &helper,
                "Let us take a deep breath and count to three.",
            ));
            t.say(format!(
                "{} held {}'s hand. One, two, three.",
                helper, h.name
            ));
        }
        1 => {
            t.say(quote(
                rng,
                &helper,
                "When I was little, I was scared too. Then I learned it could not hurt me.",
            ));
        }
        _ => {
            t.say(format!(
                "{} sang a soft song, and {} listened.",
                helper, h.name
            ));
        }
    }
    t.paragraph();
    t.say(format!(
        "{} opened {} eyes and looked again. It was not so bad after all.",
        h.name, h.his
    ));
    t.say(format!(
        "{} felt {} and {}.",
        h.he_cap(),
        pick(rng, HAPPY),
        pick(rng, &["brave", "strong", "big", "safe"])
    ));
    t.say(quote(rng, &h.name, "I did it! I am not scared anymore!"));
}

fn helping(rng: &mut Rng, c: &Cast, t: &mut Text) {
    let (h, f, p) = (&c.hero, &c.friend, c.place);
    let &(animal, trouble, moves) = pick(rng, HURT_ANIMALS);
    t.say(format!(
        "{}, {} {} to {} with {}.",
        c.time,
        h.name,
        pick(rng, WALK),
        p.name,
        f.name
    ));
    t.say(format!(
        "{} they heard a small sound {}.",
        pick(
            rng,
            &["Suddenly,", "All of a sudden,", "After a while,", "Then"]
        ),
        pick(rng, p.spots)
    ));
    t.say(format!(
        "It was a little {animal}. The poor {animal} {trouble}."
    ));
    t.say(quote(
        rng,
        &h.name,
        &format!("Oh no! We have to help the {animal}."),
    ));
    t.paragraph();
    match rng.below(2) {
        0 => t.say(format!(
            "{} and {} worked together. {} held the {} gently while {} helped.",
            h.name, f.name, h.name, animal, f.name
        )),
        _ => t.say(format!(
            "{} was careful and slow. {} talked to the {} in a soft voice so it would not be afraid.",
            h.name, f.name, animal
        )),
    }
    t.say(format!("They gave it some water and {}.", pick(rng, FOODS)));
    t.say(format!(
        "Soon the {} felt better. It looked at them with {} eyes.",
        animal,
        pick(rng, &["big", "bright", "happy", "shiny"])
    ));
    t.paragraph();
    t.say(format!(
        "Then the {} {} away, happy and free.",
        animal, moves
    ));
    let words = *pick(
        rng,
        &[
            "We did a good thing today.",
            "Goodbye, little friend!",
            "I hope we see it again.",
        ],
    );
    t.say(quote(rng, &f.name, words));
    t.say(format!(
        "{} nodded. {} felt warm and {} inside.",
        h.name,
        h.he_cap(),
        pick(rng, HAPPY)
    ));
}

fn new_skill(rng: &mut Rng, c: &Cast, t: &mut Text) {
    let h = &c.hero;
    let &(skill, fail, win) = pick(rng, SKILLS);
    match rng.below(2) {
        0 => t.say(format!("{} wanted to learn how to {}.", h.name, skill)),
        _ => t.say(format!(
            "{} watched {} {} and wanted to try too.",
            h.name, c.friend.name, skill
        )),
    }
    t.say(format!(
        "{}, {} tried for the first time, but {} {}.",
        c.time, h.he, h.he, fail
    ));
    t.say(format!("{} felt {}.", h.he_cap(), pick(rng, SAD)));
    let line = *pick(
        rng,
        &[
            "I can not do it. It is too hard.",
            "I will never learn this!",
            "Why is it so hard for me?",
        ],
    );
    t.say(quote(rng, &h.name, line));
    t.paragraph();
    t.say(format!("{} came to help.", c.adult));
    let advice = *pick(
        rng,
        &[
            "Everyone makes mistakes when they learn. Try again, and go slow.",
            "Do not give up. Every time you try, you get a little better.",
            "I could not do it at first either. Let us practice together.",
        ],
    );
    t.say(quote(rng, c.adult, advice));
    t.say(format!(
        "So {} tried again. And again. {} did not give up.",
        h.name,
        h.he_cap()
    ));
    t.paragraph();
    t.say(format!("At last, {} {}!", h.name, win));
    t.say(quote(rng, &h.name, "Look at me! I did it!"));
    t.say(format!(
        "{} clapped and gave {} a big hug. {} was so {}.",
        c.adult,
        h.him,
        h.name,
        pick(rng, HAPPY)
    ));
}

fn gift(rng: &mut Rng, c: &Cast, t: &mut Text) {
    let h = &c.hero;
    let present = *pick(rng, GIFTS);
    let occasion = *pick(rng, OCCASIONS);
    let (who, who_he) = if chance(rng, 0.5) {
        (c.adult.to_string(), c.adult_he)
    } else {
        (c.friend.name.clone(), c.friend.he)
    };
    t.say(format!("{}, it was {}'s {}.", c.time, who, occasion));
    t.say(format!(
        "{} wanted to make something {} for {}.",
        h.name,
        pick(rng, &["special", "nice", "pretty", "lovely", "wonderful"]),
        who
    ));
    t.say(format!(
        "{} thought and thought. Then {} had an idea. {} would make {}!",
        h.he_cap(),
        h.he,
        h.he_cap(),
        present
    ));
    t.paragraph();
    match rng.below(3) {
        0 => t.say(format!(
            "{} worked very hard. It was not easy, and once {} almost gave up.",
            h.name, h.he
        )),
        1 => {
            t.say(format!(
            "{} used glue, paper and a lot of love. {} even asked {} for help with the hard part.",
            h.name,
            h.he_cap(),
            if who == c.adult { &c.friend.name } else { c.adult }
        ))
        }
        _ => t.say(format!(
            "It took all morning. {} hands were sticky, but {} did not mind.",
            cap(h.his),
            h.he
        )),
    }
    t.say(format!(
        "{} hid the gift {} so that {} would not see it.",
        h.he_cap(),
        pick(rng, c.place.spots),
        who
    ));
    t.paragraph();
    match rng.below(2) {
        0 => t.say(format!(
            "When {who} came, {} gave {who} the surprise.",
            h.name
        )),
        _ => t.say(format!("{} ran to {who} with the surprise.", h.name)),
    }
    t.say(quote(
        rng,
        &who,
        "Oh, it is beautiful! Did you make this for me?",
    ));
    t.say(quote(rng, &h.name, &format!("Yes! Happy {occasion}!")));
    t.say(format!(
        "{} smiled and said it was the best gift {} had ever had.",
        who, who_he
    ));
}

fn adventure(rng: &mut Rng, c: &Cast, t: &mut Text) {
    let (h, f, p) = (&c.hero, &c.friend, c.place);
    let &(found, inside) = pick(rng, DISCOVERIES);
    t.say(format!(
        "{}, {} and {} went to explore {}.",
        c.time, h.name, f.name, p.name
    ));
    let (first, second) = pick2(rng, p.sights);
    t.say(format!("They saw {first} and {second}."));
    t.say(format!(
        "Then {} found {} {}.",
        h.name,
        found,
        pick(rng, p.spots)
    ));
    let q = *pick(
        rng,
        &[
            "What is that? Should we go and see?",
            "Do you think it is safe?",
            "Where does it go?",
        ],
    );
    t.say(quote(rng, &f.name, q));
    t.say(format!(
        "{} felt a little {}, but also very curious.",
        h.name,
        pick(rng, SCARED)
    ));
    t.paragraph();
    t.say(format!(
        "They went closer, step by step. And there they found {}!",
        inside
    ));
    let wow = *pick(
        rng,
        &[
            "Wow! This is amazing!",
            "I can not believe it!",
            "Look at that!",
        ],
    );
    t.say(quote(rng, &h.name, wow));
    t.say(format!(
        "They watched for a long time and did not make a sound. It was {}.",
        pick(
            rng,
            &[
                "amazing",
                "wonderful",
                "beautiful",
                "a lovely sight",
                "like a dream"
            ]
        )
    ));
    t.paragraph();
    t.say(format!(
        "When it was time to go home, they told {} all about it.",
        c.adult
    ));
    t.say(quote(
        rng,
        c.adult,
        "What a big adventure! I am glad you stayed together.",
    ));
}

fn mistake(rng: &mut Rng, c: &Cast, t: &mut Text) {
    let h = &c.hero;
    let thing = *pick(rng, BREAKABLES);
    let (owner, owner_he) = if chance(rng, 0.5) {
        (c.adult.to_string(), c.adult_he)
    } else {
        (c.friend.name.clone(), c.friend.he)
    };
    t.say(format!(
        "{}, {} was playing with {} {} in the house.",
        c.time, h.name, h.his, c.object
    ));
    t.say(format!(
        "{} threw it too hard, and it hit {}'s {}. Crash! The {} broke.",
        h.he_cap(),
        owner,
        thing,
        thing
    ));
    t.say(format!(
        "{} was very {}. {} wanted to hide the pieces.",
        h.name,
        pick(rng, SCARED),
        h.he_cap()
    ));
    t.paragraph();
    t.say(format!(
        "But then {} thought about how {} would feel.",
        h.he, owner
    ));
    t.say(format!(
        "{} went to {} and said, \"I am sorry. I broke your {}. It was an accident.\"",
        h.name, owner, thing
    ));
    t.say(format!(
        "{owner} looked at the pieces. Then {owner_he} gave {} a hug.",
        h.name
    ));
    t.say(quote(
        rng,
        &owner,
        "Thank you for telling me the truth. We can fix it together.",
    ));
    t.paragraph();
    t.say(format!(
        "They fixed the {} with glue, and it looked almost new. {} felt much better.",
        thing, h.name
    ));
}

fn picnic(rng: &mut Rng, c: &Cast, t: &mut Text) {
    let (h, f, p) = (&c.hero, &c.friend, c.place);
    let food = *pick(rng, FOODS);
    let food2 = *pick(rng, FOODS);
    t.say(format!(
        "{}, {} and {} had a picnic at {}.",
        c.time, h.name, f.name, p.name
    ));
    t.say(format!(
        "They packed {} and {} in a big basket.",
        food,
        if food2 == food { "juice" } else { food2 }
    ));
    t.paragraph();
    t.say("But just as they sat down, dark clouds came and it started to rain!".to_string());
    t.say(quote(rng, &f.name, "Oh no! Our picnic is ruined!"));
    t.say(format!(
        "{} was {}. Then {} had an idea.",
        h.name,
        pick(rng, SAD),
        h.he
    ));
    let dry = format!(
        "Let us have the picnic {} instead!",
        pick(
            rng,
            &[
                "under the big tree",
                "in the little tent",
                "under my big umbrella",
                "in the car",
                "under the bridge",
                "on the porch",
            ]
        )
    );
    t.say(quote(rng, &h.name, &dry));
    t.paragraph();
    t.say(format!(
        "So they ran and ate their {} where it was dry.",
        food
    ));
    t.say(format!(
        "They listened to the rain and told funny stories. {} laughed so much.",
        f.name
    ));
    t.say(format!(
        "When the rain stopped, they saw a big rainbow in the sky. It was a {} day after all.",
        pick(rng, GOOD)
    ));
}

fn race(rng: &mut Rng, c: &Cast, t: &mut Text) {
    let (h, f, p) = (&c.hero, &c.friend, c.place);
    let goal = *pick(rng, p.spots);
    t.say(format!(
        "{}, {} and {} were at {}.",
        c.time, h.name, f.name, p.name
    ));
    let dare = format!("Let us race! The first one {goal} wins!");
    t.say(quote(rng, &f.name, &dare));
    t.say(format!(
        "They ran as fast as they could. {} was in front, and {} wanted to win so much.",
        f.name, h.name
    ));
    t.paragraph();
    match rng.below(2) {
        0 => {
            t.say(format!(
                "Then {} tripped on a stone and fell down. \"Ouch!\" {} cried.",
                f.name, f.he
            ));
            t.say(format!(
                "{} could run past and win. But {} stopped and helped {} up.",
                h.name, h.he, f.name
            ));
            t.say(quote(rng, &h.name, "Are you okay? Let us finish together."));
            t.say(
                "So they walked the rest of the way side by side, and they both won.".to_string(),
            );
        }
        _ => {
            t.say(format!(
                "{} ran and ran, but {} was faster and got there first.",
                h.name, f.name
            ));
            t.say(format!(
                "{} felt {} for a moment. Then {} smiled.",
                h.name,
                pick(rng, MAD),
                h.he
            ));
            t.say(quote(rng, &h.name, "Good job! You are so fast!"));
            t.say(quote(rng, &f.name, "Thank you! Do you want to race again?"));
        }
    }
    t.say(format!(
        "They laughed and lay on the grass to rest. Winning was not so important. Playing together was the {} part.",
        pick(rng, &["best", "most fun", "happiest"])
    ));
}

fn new_friend(rng: &mut Rng, c: &Cast, t: &mut Text) {
    let (h, f, p) = (&c.hero, &c.friend, c.place);
    t.say(format!(
        "{}, {} went to {} alone. {} felt a little {}.",
        c.time,
        h.name,
        p.name,
        h.he_cap(),
        pick(rng, &["lonely", "sad", "bored", "quiet"])
    ));
    t.say(format!(
        "Then {} saw {} {} sitting {}. It was {}, and {} was new in town.",
        h.he,
        a(&f.adj),
        f.kind,
        pick(rng, p.spots),
        f.name,
        f.he
    ));
    t.paragraph();
    t.say(format!(
        "{} was shy, but {} walked over and said hello.",
        h.name, h.he
    ));
    let ask = format!("Hi, I am {}. Do you want to play with me?", h.name);
    t.say(quote(rng, &h.name, &ask));
    match f.sound {
        Some(sound) => t.say(quote(
            rng,
            &f.name,
            &format!("{sound}! Yes, I would love to!"),
        )),
        None => t.say(quote(rng, &f.name, "Yes, I would love to!")),
    }
    t.paragraph();
    let (first, second) = pick2(rng, p.activity);
    t.say(format!(
        "They played all day. They liked to {first} and {second}."
    ));
    t.say(format!(
        "{} showed {} {} {}, and {} told {} about {} old home.",
        h.name, f.name, h.his, c.object, f.name, h.name, f.his
    ));
    t.say(format!(
        "When it was time to go, {} was not lonely anymore.",
        h.name
    ));
}

fn build(rng: &mut Rng, c: &Cast, t: &mut Text) {
    let (h, f, p) = (&c.hero, &c.friend, c.place);
    let &(what, stuff, ruin) = pick(
        rng,
        &[
            (
                "a sand castle",
                "wet sand",
                "a big wave came and washed it away",
            ),
            ("a snowman", "snow", "the sun came out and it began to melt"),
            (
                "a tall tower",
                "wooden blocks",
                "a little puppy ran by and knocked it over",
            ),
            (
                "a little fort",
                "sticks and leaves",
                "the wind blew and it fell down",
            ),
            ("a bird house", "wood and nails", "one wall fell off"),
            ("a boat", "paper", "the boat got wet and sank"),
        ],
    );
    t.say(format!(
        "{}, {} and {} decided to build {} at {}.",
        c.time, h.name, f.name, what, p.name
    ));
    t.say(format!(
        "They used {} and worked for a long time. It was the {} thing they had ever made.",
        stuff,
        pick(rng, &["biggest", "best", "prettiest", "tallest"])
    ));
    t.paragraph();
    t.say(format!("But then {}!", ruin));
    t.say(format!(
        "{} was so {} that {} wanted to cry.",
        h.name,
        pick(rng, SAD),
        h.he
    ));
    let line = *pick(
        rng,
        &[
            "We can build it again. And this time it will be even better!",
            "Do not be sad. We know how to do it now.",
        ],
    );
    t.say(quote(rng, &f.name, line));
    t.paragraph();
    t.say(format!(
        "So they started again. {} brought more {}, and {} had new ideas.",
        h.name, stuff, f.name
    ));
    t.say(format!(
        "The new one was even better than the first. They put {} {} on top.",
        h.his, c.object
    ));
    t.say(quote(
        rng,
        c.adult,
        "What a wonderful job! You make a great team.",
    ));
}

fn bedtime(rng: &mut Rng, c: &Cast, t: &mut Text) {
    let (h, f, p) = (&c.hero, &c.friend, c.place);
    t.say(format!(
        "It was time for bed, but {} could not sleep.",
        h.name
    ));
    t.say(format!(
        "{} turned this way and that way. {} {} was next to {} on the pillow.",
        h.he_cap(),
        cap(h.his),
        c.object,
        h.him
    ));
    t.say(quote(rng, &h.name, "Will you tell me a story?"));
    t.paragraph();
    t.say(format!(
        "{} sat on the bed and told a story about {}.",
        c.adult, p.name
    ));
    t.say(format!(
        "Soon {} eyes felt heavy, and {} began to dream.",
        h.his, h.he
    ));
    t.say(format!(
        "In the dream, {} and {} could fly! They flew over {} and saw {} from high in the sky.",
        h.name,
        f.name,
        p.name,
        pick(rng, p.sights)
    ));
    t.say(format!(
        "They waved to {} and {}.",
        pick(rng, &["the birds", "the clouds", "the moon", "the stars"]),
        pick(rng, &["the birds", "the clouds", "the moon", "the stars"])
    ));
    t.paragraph();
    t.say(format!(
        "In the morning, {} woke up with a big smile.",
        h.name
    ));
    let tell = format!("{}, I had the {} dream!", c.adult, pick(rng, GOOD));
    t.say(quote(rng, &h.name, &tell));
}

fn cookie_jar(rng: &mut Rng, c: &Cast, t: &mut Text) {
    let h = &c.hero;
    let food = *pick(rng, &["cookies", "muffins", "candy", "cake"]);
    t.say(format!(
        "{}, {} saw a jar of {} on a high shelf in the kitchen.",
        c.time, h.name, food
    ));
    t.say(format!(
        "{} wanted one very much, but {} said to wait until after dinner.",
        h.he_cap(),
        c.adult
    ));
    t.paragraph();
    t.say(format!(
        "When nobody was looking, {} pushed a chair to the shelf and climbed up.",
        h.name
    ));
    t.say(format!(
        "{} reached and reached. The chair began to wobble!",
        h.he_cap()
    ));
    t.say(format!(
        "Just in time, {} came in and held the chair.",
        c.adult
    ));
    let warn = "That was not safe. You could have been hurt.";
    t.say(quote(rng, c.adult, warn));
    t.say(quote(rng, &h.name, "I am sorry. I just wanted a treat."));
    t.paragraph();
    t.say(format!(
        "{} gave {} a hug. After dinner, they ate the {} together, and they tasted even better.",
        c.adult, h.him, food
    ));
    t.say(format!(
        "{} learned that waiting is hard, but it is worth it.",
        h.name
    ));
}

/// A plot template: writes the middle of a story about the cast.
type Plot = fn(&mut Rng, &Cast, &mut Text);

/// The plot templates, each with whether the opening may present the friend as an old
/// friend, and the lesson its ending may state.
const PLOTS: &[(Plot, bool, Option<&str>)] = &[
    (lost_object, true, Some("friends help each other")),
    (sharing, true, Some("it is good to share")),
    (fear, true, Some("being brave is not about having no fear")),
    (helping, true, Some("it is nice to help others")),
    (new_skill, true, Some("trying again is how you learn")),
    (gift, true, Some("a small gift from the heart means a lot")),
    (adventure, true, Some("the world is full of surprises")),
    (mistake, true, Some("it is important to tell the truth")),
    (picnic, true, Some("a rainy day can still be a happy day")),
    (race, true, Some("playing together is better than winning")),
    (new_friend, false, Some("one hello can make a new friend")),
    (build, true, Some("working together makes hard things easy")),
    (bedtime, true, None),
    (cookie_jar, true, None),
];

/// One story (ASCII, paragraphs separated by a blank line).
pub fn story(rng: &mut Rng) -> String {
    let c = Cast::draw(rng);
    let mut t = Text::new();
    let &(plot, friend_known, lesson) = pick(rng, PLOTS);
    setup(rng, &c, &mut t, friend_known);
    t.paragraph();
    plot(rng, &c, &mut t);
    t.paragraph();
    if let Some(lesson) = lesson.filter(|_| chance(rng, 0.4)) {
        t.say(format!("{} learned that {lesson}.", c.hero.name));
    }
    let end = pick(rng, ENDINGS)
        .replace("{A}", &c.hero.name)
        .replace("{B}", &c.friend.name);
    t.say(end);
    t.finish()
}

/// `n_stories` stories from `seed`.
pub fn corpus(seed: u64, n_stories: usize) -> Vec<String> {
    let mut rng = Rng::new(seed);
    (0..n_stories).map(|_| story(&mut rng)).collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::HashSet;

    #[test]
    fn deterministic_ascii_and_varied() {
        let a = corpus(7, 2000);
        assert_eq!(a, corpus(7, 2000));
        assert_ne!(a[..50], corpus(8, 50)[..]);
        let bytes: usize = a.iter().map(|s| s.len()).sum();
        let words: Vec<&str> = a.iter().flat_map(|s| s.split_whitespace()).collect();
        let distinct: HashSet<String> = words
            .iter()
            .map(|w| {
                w.trim_matches(|c: char| !c.is_ascii_alphanumeric())
                    .to_ascii_lowercase()
            })
            .collect();
        let stories: HashSet<&String> = a.iter().collect();
        eprintln!(
            "corpus: {} stories, {} bytes ({:.0}/story), {} words ({:.0}/story), {} distinct words, {} distinct stories",
            a.len(),
            bytes,
            bytes as f64 / a.len() as f64,
            words.len(),
            words.len() as f64 / a.len() as f64,
            distinct.len(),
            stories.len()
        );
        for s in &a[..8] {
            eprintln!("---\n{s}");
        }
        assert!(a.iter().all(|s| s.is_ascii()));
        assert!(stories.len() == a.len());
        assert!(distinct.len() > 500, "{}", distinct.len());
    }
}
