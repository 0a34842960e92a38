"""Words the text components share: the attribute and object lexicon, tokens and head
nouns, and the phrase grammar of referring expressions."""
