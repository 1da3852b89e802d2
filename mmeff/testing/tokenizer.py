"""An offline word-level tokenizer, so tiny models get a real processor without downloads."""

from __future__ import annotations

from collections.abc import Iterable

from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors
from transformers import PreTrainedTokenizerFast

SPECIAL = ["<pad>", "<s>", "</s>", "<unk>", "<image>"]
BASE_WORDS = (
    "USER ASSISTANT : ? . , ! \n yes no a an the is are there in of on to and or what how many which "
    "this that image picture photo color colour shape left right top bottom above below next one two three "
    "four five six seven eight nine zero describe object objects cat cats dog red green blue yellow purple "
    "orange white black gray circle square triangle star cross heart hexagon diamond big small"
).split(" ")

LLAVA_CHAT_TEMPLATE = (
    "{% for message in messages %}"
    "{% if message['role'] == 'user' %}USER: "
    "{% for item in message['content'] %}"
    "{% if item['type'] == 'image' %}<image>\n{% elif item['type'] == 'text' %}{{ item['text'] }}{% endif %}"
    "{% endfor %} {% else %}ASSISTANT: "
    "{% for item in message['content'] %}{% if item['type'] == 'text' %}{{ item['text'] }}{% endif %}{% endfor %}"
    "</s>{% endif %}{% endfor %}"
    "{% if add_generation_prompt %}ASSISTANT:{% endif %}"
)


def word_tokenizer(extra_words: Iterable[str] = ()) -> PreTrainedTokenizerFast:
    """A ``PreTrainedTokenizerFast`` over a fixed word list; unknown words map to ``<unk>``."""
    words = list(dict.fromkeys([*SPECIAL, *BASE_WORDS, *extra_words]))
    vocab = {w: i for i, w in enumerate(words)}
    tok = Tokenizer(models.WordLevel(vocab=vocab, unk_token="<unk>"))
    tok.pre_tokenizer = pre_tokenizers.Sequence(
        [pre_tokenizers.Split("\n", behavior="isolated"), pre_tokenizers.Split("<image>", behavior="isolated"),
         pre_tokenizers.WhitespaceSplit(), pre_tokenizers.Punctuation()]
    )
    tok.post_processor = processors.TemplateProcessing(single="<s> $A", special_tokens=[("<s>", vocab["<s>"])])
    tok.decoder = decoders.WordPiece(prefix="##", cleanup=True)
    fast = PreTrainedTokenizerFast(
        tokenizer_object=tok,
        bos_token="<s>",
        eos_token="</s>",
        unk_token="<unk>",
        pad_token="<pad>",
        extra_special_tokens={"image_token": "<image>"},
    )
    fast.padding_side = "left"
    return fast


#: the ChatML markers every Qwen-based processor's template uses
CHATML_PAD, CHATML_START, CHATML_END = "<|endoftext|>", "<|im_start|>", "<|im_end|>"


def chatml_word_tokenizer(
    special: list[str], extra_special_tokens: dict[str, str], words: Iterable[str] = (), *,
    eos: str = CHATML_END, pad: str = CHATML_PAD, bos: str | None = None,
) -> PreTrainedTokenizerFast:
    """A word-level chat tokenizer: ``special`` tokens first (ids 0..), each matched whole, then
    ``BASE_WORDS`` + ``words``; ``eos`` ends a turn (ChatML's ``<|im_end|>`` by default); left padding.

    ``extra_special_tokens`` names the attributes a processor reads (``image_token``, ...)."""
    vocab_words = list(dict.fromkeys([*special, *BASE_WORDS, *words]))
    vocab = {w: i for i, w in enumerate(vocab_words)}
    tok = Tokenizer(models.WordLevel(vocab=vocab, unk_token="<unk>"))
    splits = [pre_tokenizers.Split(s, behavior="isolated") for s in ["\n", *special]]
    tok.pre_tokenizer = pre_tokenizers.Sequence(
        [*splits, pre_tokenizers.WhitespaceSplit(), pre_tokenizers.Punctuation()]
    )
    tok.decoder = decoders.WordPiece(prefix="##", cleanup=True)
    fast = PreTrainedTokenizerFast(tokenizer_object=tok, eos_token=eos, unk_token="<unk>", pad_token=pad,
                                   bos_token=bos, extra_special_tokens=extra_special_tokens)
    # added tokens, so "<|...|>" and "<image>" are never cut up by the punctuation pre-tokenizer
    fast.add_tokens([t for t in special if t not in (pad, "<unk>")], special_tokens=True)
    fast.padding_side = "left"
    return fast
