#!/usr/bin/env python3
"""Build the tokenizer fixture of the LibTorch runtime tests (tests/fixtures/tokenizer/).

Run once by whoever regenerates fixtures (never by CI):  python3 tools/make_tokenizer_fixture.py
Needs PyPI `tokenizers`, `transformers` (for the chat templates and processors), `torch`, `pillow`.

What it writes, and why:
- tokenizer.json: a small byte-level BPE (~1.6k tokens) trained with the `tokenizers` library on the
  multilingual corpus embedded below, with the normalizer / pre-tokenizer / decoder / post-processor
  exactly as transformers' Qwen2Converter builds them, plus the Qwen2-VL / LLaVA-OV added tokens.
  Merges are written as ["a","b"] pairs (the format of tokenizers >= 0.20).
- tokenizer_legacy_merges.json: the same file with merges as "a b" strings (the older format), so
  that the C++ reader is tested on both formats against the same reference ids.
- tokenizer_config.json: transformers' companion file (as the Qwen2.5-VL hub ships it, chat
  template included); chat_templates.json: the official Qwen2.5-VL and LLaVA-OneVision templates.
- tokenizer_wordpiece.json, tokenizer_unigram.json: tokenizers of another kind, which the C++
  reader must reject.
- reference_ids.json: HF ids of test strings (multilingual, digits, whitespace runs, contractions,
  special tokens, NFC cases) and HF decodes (round trips, skip_special, invalid UTF-8 byte runs).
- chat_template_reference.json: HF apply_chat_template(tokenize=False) renderings of message lists
  with both templates, and the HF processors' expansion of image placeholders into N tokens.
Every file is written deterministically: running the script twice gives byte-identical output.
"""
import json
import os
import sys

os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

from tokenizers import AddedToken, Regex, Tokenizer, decoders, models, normalizers, pre_tokenizers, processors, trainers  # noqa: E402

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
OUT = os.path.join(ROOT, "tests", "fixtures", "tokenizer")

# Qwen2's pre-tokenizer regex (transformers' PRETOKENIZE_REGEX / Qwen2Converter).
QWEN2_REGEX = r"""(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+"""

# The ten tokens the runtime brief fixes (R2's model fixtures rely on their order), then two
# non-special added tokens (as Qwen2.5's <tool_call> is) so that skip_special is tested on both kinds.
SPECIAL_TOKENS = ["<|endoftext|>", "<|im_start|>", "<|im_end|>", "<|vision_start|>", "<|vision_end|>",
                  "<|vision_pad|>", "<|image_pad|>", "<|video_pad|>", "<image>", "<video>"]
NON_SPECIAL_ADDED = ["<tool_call>", "</tool_call>"]

VOCAB_SIZE = 1600

# A small multilingual training corpus, written for this fixture.
CORPUS = [
    "The quick brown fox jumps over the lazy dog. The dog was not amused, but the fox was very happy.",
    "I'm sure they'll come tomorrow; we've waited long enough, and you'd agree it's time. THEY'LL SEE.",
    "Describe the image in detail. What is shown in this picture? There is a cat sitting on a red chair.",
    "A man is riding a bicycle down the street while a woman walks her dog in the park nearby.",
    "The picture shows two people standing near a window, and the light is coming from the left side.",
    "Please answer the question with a single word or phrase. Answer: yes. Answer: no. Answer: two.",
    "You are a helpful assistant. The assistant gives helpful, detailed, and polite answers to the user.",
    "In 2024, the population was 1,234,567 and the budget was $3.14 billion (about 2.9 billion euros).",
    "Call 555-0123 before 10:30 am on 2025-01-31, or write to info@example.com for more information.",
    "def encode(text):\n    return [ord(c) for c in text]\n\nif __name__ == '__main__':\n    print(encode('hi'))\n",
    "for (int i = 0; i < n; ++i) {\n\tsum += x[i] * y[i];\n}\nreturn sum;\n",
    "Der schnelle braune Fuchs springt über den faulen Hund. Größere Häuser stehen in München und Köln.",
    "Die Bäume im Süden sind grün, und die Straße führt über die Brücke zum Fluss. Schöne Grüße!",
    "Le renard brun rapide saute par-dessus le chien paresseux. C'est l'été, et il fait très chaud à Paris.",
    "El rápido zorro marrón salta sobre el perro perezoso. ¿Dónde está la estación? ¡Mañana será otro día!",
    "Быстрая коричневая лиса прыгает через ленивую собаку. Привет, как дела? Всё хорошо, спасибо.",
    "Москва и Санкт-Петербург — крупнейшие города России. Изображение показывает кошку на стуле.",
    "敏捷的棕色狐狸跳过了懒狗。这张图片显示了一只猫坐在红色的椅子上。你好，世界！今天天气很好。",
    "我们正在测试分词器。中文文本没有空格，所以每个字都可能成为一个单独的词元。图片中有两个人。",
    "素早い茶色の狐がのろまな犬を飛び越える。この画像には赤い椅子に座っている猫が写っています。",
    "こんにちは、世界！今日はいい天気ですね。トークナイザーのテストをしています。カタカナとひらがな。",
    "빠른 갈색 여우가 게으른 개를 뛰어넘습니다. 안녕하세요, 세계! 이 사진에는 고양이가 있습니다.",
    "الثعلب البني السريع يقفز فوق الكلب الكسول. مرحبا بالعالم! هذه الصورة تظهر قطة على كرسي أحمر.",
    "तेज़ भूरी लोमड़ी आलसी कुत्ते के ऊपर कूदती है। नमस्ते दुनिया! इस चित्र में एक बिल्ली कुर्सी पर बैठी है।",
    "Γρήγορη καφέ αλεπού πηδά πάνω από τον τεμπέλη σκύλο. Γεια σου κόσμε!",
    "Szybki brązowy lis przeskakuje nad leniwym psem. Zażółć gęślą jaźń.",
    "Hızlı kahverengi tilki tembel köpeğin üzerinden atlar. Merhaba dünya! Çok güzel bir gün.",
    "Tiếng Việt có nhiều dấu: ả, ấ, ờ, ự. Xin chào thế giới! Hôm nay trời đẹp.",
    "Emoji: 😀 😃 😄 👍 👍🏽 🎉 ❤️ 🐱 🚲 — they are common in chat messages!!! ??? ...",
    "Whitespace:   three spaces,\ttab,\t\ttwo tabs,\n\nblank line,\r\nCRLF line,  trailing  \n",
    "Punctuation runs: !!! ??? ... --- *** ### ((())) [[[]]] {{{}}} <<<>>> ::: ;;; \"\"\" ''' ``` ~~~",
    "Numbers: 0 1 2 3 4 5 6 7 8 9 10 42 100 256 1024 65536 3.14159 2.71828 1e-6 -17 +23 50% 12/05",
    "user: hi there! assistant: hello, how can I help you today? user: describe this image please.",
    "The image shows a sunny beach with palm trees, blue water, and a few boats near the shore.",
    "Yes, the answer is correct. No, the answer is not correct. The correct answer is option B.",
]
# Repeat the corpus a few times (with the lines in a different order) so that merges of frequency >= 2
# exist for every language; the trainer is deterministic for a fixed input.
TRAINING_TEXT = CORPUS + CORPUS[::-1] + CORPUS[::2] + CORPUS[1::2]

# Strings whose HF ids the C++ tokenizer must reproduce exactly.
TEST_STRINGS = [
    "",
    "Hello world",
    "Hello, world! How are you?",
    "The quick brown fox jumps over the lazy dog.",
    # contractions (the case-insensitive group) and look-alikes
    "I'm", "I'M", "THEY'LL", "we've", "We'VE", "you'd", "it's", "don't", "DON'T", "it’s curly",
    "'s'S're'RE", "rock 'n' roll", "''quoted''",
    # digits and numbers: \p{N} is one digit per piece
    "0", "42", "1234567890", "3.14159", "1,000,000", "-17+23=6", "2025-01-31T10:30:00Z",
    "٣٤٥ ١٢", "१२३", "Ⅻ and ½ and ²", "abc123def", "x2y3",
    # whitespace runs
    " ", "  ", "   ", "\t", "\t\t", "\n", "\n\n\n", "  \n  ", "a  b", "a   b", "trailing  ", "  leading",
    "tab\tseparated\tvalues", "line1\nline2\r\nline3\rline4", "\r\n\r\n", " \n", "\n ", "a \n b",
    "mixed \t \n\t end  ", "non\u00a0breaking", "ideographic\u3000space", "nel\u0085char",
    "thin\u2009space and\u200bzero width", "para\u2029sep",
    # \s differences between regex engines: U+0085 (NEL), VT, FF, NBSP, U+3000 in runs and at ends
    "a\u0085\u0085b", "x \u0085", "\u0085", "\u0085\u0085 y", "end\u0085\n", "vt\u000b\u000cff",
    "a \u00a0 b", "\u3000\u3000x", "x\u00a0\u00a0", "\u2028\u2028z", "\u001c\u001f sep",
    # case-insensitive contractions under Unicode case folding (long s, Kelvin sign)
    "it'\u017f", "'\u212a", "I'\u0130",
    # punctuation runs
    "!!!", "?!?!", "...", "Wait... what?!", "((a+b)*c)", "--->", "\"quoted\"", "a,b;c:d", "#include <vector>",
    "x = y[i] + z->w;", "email@example.com", "https://example.com/path?q=1&r=2",
    # code
    "def f(x):\n    return x * 2\n", "for (int i = 0; i < n; ++i) {\n\tsum += i;\n}\n",
    # multilingual
    "你好，世界！", "这张图片显示了一只猫。", "こんにちは、世界！", "トークナイザー", "안녕하세요, 세계!",
    "مرحبا بالعالم", "नमस्ते दुनिया", "Привет, мир!", "ВСЁ ХОРОШО", "Größere Häuser in München, Köln und Düsseldorf",
    "ÄÖÜ äöü ß", "Ελληνικά", "Zażółć gęślą jaźń", "Tiếng Việt", "ไทย ภาษา", "עברית",
    # emoji (multi-codepoint sequences)
    "😀", "👍🏽", "👨‍👩‍👧", "🇩🇪🇯🇵", "❤️", "I ❤️ NY 🗽!",
    # NFC: combining sequences that normalization composes (and singletons it maps)
    "e\u0301", "cafe\u0301", "A\u030a", "\u212b", "\u1100\u1161\u11a8", "o\u0308\u0304", "\u0958",
    "n\u0303o", "ﬁ ligature",
    # control characters and odd code points
    "\x00", "a\x01b\x7fc", "\u00ad soft hyphen", "\ufeffBOM", "\U0001d400\U0001d401", "\U00010348",
    # special / added tokens
    "<|im_start|>user\nhi<|im_end|>", "<|im_start|>system\nYou are a helpful assistant.<|im_end|>\n",
    "<image>\nWhat", "<image><image>", "<|im_end|><|im_start|>", "abc<image>def", " <image> ",
    "<|vision_start|><|image_pad|><|image_pad|><|vision_end|>Describe.", "<|endoftext|>",
    "<|im_start", "im_end|>", "<|im_start|", "<<|im_end|>>", "<tool_call>{\"a\": 1}</tool_call>",
    "<video>\n<image>\n", "<|video_pad|><|vision_pad|>", "text<|endoftext|>more text",
]

# Decode cases on top of the encode round trips: id sequences built from single byte tokens, to test
# the errors="replace" policy on invalid UTF-8 (maximal subparts each become U+FFFD).
BYTE_RUNS = [
    [0xC3],                    # lead byte alone
    [0xC3, 0x41],              # lead byte then ASCII
    [0xE4, 0xB8],              # truncated 3-byte sequence -> one U+FFFD
    [0xF0, 0x9F, 0x98],        # truncated 4-byte sequence -> one U+FFFD
    [0xFF],                    # never valid
    [0xC0, 0x80],              # overlong -> two U+FFFD
    [0xED, 0xA0, 0x80],        # surrogate -> three U+FFFD
    [0x80, 0x80],              # lone continuation bytes
    [0xF4, 0x90, 0x80, 0x80],  # beyond U+10FFFF
    [0xE2, 0x82, 0xAC],        # a valid euro sign, byte by byte
    [0x41, 0xE2, 0x82, 0x42],  # truncated in the middle of ASCII
]


def bytes_to_unicode():
    """GPT-2's byte -> printable character table (as in the ByteLevel pre-tokenizer)."""
    bs = list(range(ord("!"), ord("~") + 1)) + list(range(ord("¡"), ord("¬") + 1)) + list(range(ord("®"), ord("ÿ") + 1))
    cs = bs[:]
    n = 0
    for b in range(256):
        if b not in bs:
            bs.append(b)
            cs.append(256 + n)
            n += 1
    return dict(zip(bs, [chr(c) for c in cs]))


def build_tokenizer():
    tok = Tokenizer(models.BPE(dropout=None, unk_token=None, continuing_subword_prefix="", end_of_word_suffix="",
                               fuse_unk=False, byte_fallback=False))
    tok.normalizer = normalizers.NFC()
    tok.pre_tokenizer = pre_tokenizers.Sequence([
        pre_tokenizers.Split(Regex(QWEN2_REGEX), behavior="isolated", invert=False),
        pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False),
    ])
    tok.decoder = decoders.ByteLevel()
    tok.post_processor = processors.ByteLevel(trim_offsets=False)
    trainer = trainers.BpeTrainer(vocab_size=VOCAB_SIZE, min_frequency=2, show_progress=False,
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet(), special_tokens=[])
    tok.train_from_iterator(TRAINING_TEXT, trainer=trainer)
    tok.add_special_tokens([AddedToken(t, single_word=False, lstrip=False, rstrip=False, normalized=False,
                                       special=True) for t in SPECIAL_TOKENS])
    tok.add_tokens([AddedToken(t, single_word=False, lstrip=False, rstrip=False, normalized=False, special=False)
                    for t in NON_SPECIAL_ADDED])
    return tok


def write_text(name, text):
    with open(os.path.join(OUT, name), "w", encoding="utf-8", newline="\n") as f:
        f.write(text)


def write_json(name, obj):
    write_text(name, json.dumps(obj, ensure_ascii=False, indent=1) + "\n")


def other_kind_tokenizers():
    """Small tokenizers of another kind (WordPiece, Unigram) that the C++ reader must reject."""
    wp = Tokenizer(models.WordPiece({"[UNK]": 0, "hello": 1, "world": 2, "##s": 3}, unk_token="[UNK]"))
    wp.normalizer = normalizers.NFC()
    wp.pre_tokenizer = pre_tokenizers.Whitespace()
    uni = Tokenizer(models.Unigram([("<unk>", 0.0), ("▁hello", -1.0), ("▁world", -2.0)], unk_id=0,
                                   byte_fallback=False))
    return wp, uni


# ---- chat templates -------------------------------------------------------------------------------
# The official templates: Qwen2.5-VL's hub tokenizer_config.json / chat_template.json, and the one in
# transformers' convert_llava_onevision_weights_to_hf.py (llava-hf/llava-onevision-qwen2-*-ov-hf).
QWEN2_5_VL_TEMPLATE = (
    "{% set image_count = namespace(value=0) %}{% set video_count = namespace(value=0) %}"
    "{% for message in messages %}{% if loop.first and message['role'] != 'system' %}<|im_start|>system\n"
    "You are a helpful assistant.<|im_end|>\n{% endif %}<|im_start|>{{ message['role'] }}\n"
    "{% if message['content'] is string %}{{ message['content'] }}<|im_end|>\n"
    "{% else %}{% for content in message['content'] %}"
    "{% if content['type'] == 'image' or 'image' in content or 'image_url' in content %}"
    "{% set image_count.value = image_count.value + 1 %}{% if add_vision_id %}Picture {{ image_count.value }}: "
    "{% endif %}<|vision_start|><|image_pad|><|vision_end|>"
    "{% elif content['type'] == 'video' or 'video' in content %}{% set video_count.value = video_count.value + 1 %}"
    "{% if add_vision_id %}Video {{ video_count.value }}: {% endif %}<|vision_start|><|video_pad|><|vision_end|>"
    "{% elif 'text' in content %}{{ content['text'] }}{% endif %}{% endfor %}<|im_end|>\n"
    "{% endif %}{% endfor %}{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}"
)
LLAVA_ONEVISION_TEMPLATE = (
    "{% for message in messages %}{{'<|im_start|>' + message['role'] + '\\n'}}"
    "{# Render all images first #}{% for content in message['content'] | selectattr('type', 'equalto', 'image') %}"
    "{{ '<image>\\n' }}{% endfor %}"
    "{# Render all video then #}{% for content in message['content'] | selectattr('type', 'equalto', 'video') %}"
    "{{ '<video>\\n' }}{% endfor %}"
    "{# Render all text next #}{% if message['role'] != 'assistant' %}"
    "{% for content in message['content'] | selectattr('type', 'equalto', 'text') %}{{ content['text'] }}{% endfor %}"
    "{% else %}{% for content in message['content'] | selectattr('type', 'equalto', 'text') %}"
    "{% generation %}{{ content['text'] }}{% endgeneration %}{% endfor %}{% endif %}"
    "{{'<|im_end|>' + '\\n'}}{% endfor %}{% if add_generation_prompt %}{{ '<|im_start|>assistant\\n' }}{% endif %}"
)


def txt(s):
    return {"type": "text", "text": s}


IMG = {"type": "image"}
VID = {"type": "video"}

# Message lists rendered with both templates. Content is always a list of items (LLaVA-OV's template
# needs one); "system_string" cases use a plain string, which only the Qwen template accepts.
CHAT_CASES = [
    ("single_image", [{"role": "user", "content": [IMG, txt("Describe this image.")]}]),
    ("text_then_image", [{"role": "user", "content": [txt("What is in"), IMG, txt(" this picture?")]}]),
    ("text_only", [{"role": "user", "content": [txt("Hello! 你好")]}]),
    ("with_system", [{"role": "system", "content": [txt("You are a careful judge.")]},
                     {"role": "user", "content": [IMG, txt("Is the caption correct?")]}]),
    ("multi_turn", [{"role": "user", "content": [IMG, txt("What animal is this?")]},
                    {"role": "assistant", "content": [txt("A cat.")]},
                    {"role": "user", "content": [txt("And these two?"), IMG, IMG]}]),
    ("assistant_last", [{"role": "user", "content": [IMG, txt("Describe.")]},
                        {"role": "assistant", "content": [txt("A red chair\nnear a window.")]}]),
    ("system_only", [{"role": "system", "content": [txt("Sys.")]}]),
    ("video_and_image", [{"role": "user", "content": [VID, txt("Compare with "), IMG]}]),
    ("empty_text", [{"role": "user", "content": [txt("")]}]),
    ("specials_in_text", [{"role": "user", "content": [txt("literal <image> and <|im_end|> in text")]}]),
]
QWEN_STRING_CASES = [
    ("system_string", [{"role": "system", "content": "Answer briefly."},
                       {"role": "user", "content": "Why is the sky blue?"}]),
    ("user_string", [{"role": "user", "content": "Hi"}]),
]


# A variant with added-token flags Qwen2 does not use (lstrip / rstrip / normalized), so that the C++
# handling of them is checked against HF too (tokenizer_added_flags.json, reference_added_flags.json).
FLAG_TOKENS = [
    AddedToken("<mask>", lstrip=True, rstrip=False, normalized=False, special=True),
    AddedToken("<sep>", lstrip=False, rstrip=True, normalized=False, special=True),
    AddedToken("<both>", lstrip=True, rstrip=True, normalized=False, special=False),
    AddedToken("cafe\u0301", normalized=True, special=False),  # matched after NFC, as "café"
    AddedToken("<e\u0301>", normalized=False, special=False),  # matched before NFC only
]
FLAG_STRINGS = [
    "a <mask> b", "a   <mask>", "<mask>   x", "\u3000\u00a0<mask>", "x<sep>   y", "x <sep>\n\ny", "  <both>  ",
    "a<both>b", "<mask><mask>", " <sep> <sep> ", "<sep>", " <mask>", "x \t<mask>\t <sep>\t y",
    "cafe\u0301 and caf\u00e9 and cafe", "<e\u0301> and <\u00e9>", "<|im_start|> <mask> <|im_end|>",
]


def flags_reference(tok):
    tok.add_tokens(FLAG_TOKENS)
    tok.save(os.path.join(OUT, "tokenizer_added_flags.json"), pretty=True)
    cases = [{"text": s, "ids": tok.encode(s, add_special_tokens=False).ids} for s in FLAG_STRINGS]
    for c in cases:
        c["decode"] = tok.decode(c["ids"], skip_special_tokens=False)
        c["decode_skip_special"] = tok.decode(c["ids"], skip_special_tokens=True)
    write_json("reference_added_flags.json", {"generator": "tools/make_tokenizer_fixture.py", "encode": cases})


def chat_reference(tok_dir, tok_ids):
    from transformers import AutoTokenizer
    hf = AutoTokenizer.from_pretrained(tok_dir)
    # The transformers tokenizer built from the fixture must agree with the raw tokenizers one.
    for s in TEST_STRINGS:
        assert hf.encode(s, add_special_tokens=False) == tok_ids(s), s
    cases = []
    for fmt, template, items in (("qwen2_5_vl", QWEN2_5_VL_TEMPLATE, CHAT_CASES + QWEN_STRING_CASES),
                                 ("llava_onevision", LLAVA_ONEVISION_TEMPLATE, CHAT_CASES)):
        for name, messages in items:
            for gen in (False, True):
                vision_ids = (False, True) if fmt == "qwen2_5_vl" else (False,)
                for add_vision_id in vision_ids:
                    text = hf.apply_chat_template(messages, chat_template=template, tokenize=False,
                                                  add_generation_prompt=gen, add_vision_id=add_vision_id)
                    cases.append({"format": fmt, "name": name, "messages": messages, "add_generation_prompt": gen,
                                  "add_vision_id": add_vision_id, "text": text, "ids": tok_ids(text)})
    return hf, cases


def expansion_reference(hf):
    """The HF processors' expansion of image placeholders (Qwen2.5-VL: <|image_pad|> x t*h*w/4 per image;
    LLaVA-OV: <image> x its feature count), from real processors on small synthetic images."""
    import numpy as np
    from PIL import Image
    from transformers import LlavaOnevisionProcessor, Qwen2_5_VLProcessor
    from transformers.models.llava_onevision.image_processing_pil_llava_onevision import LlavaOnevisionImageProcessorPil
    from transformers.models.qwen2_vl.image_processing_pil_qwen2_vl import Qwen2VLImageProcessorPil

    def image(h, w, seed):
        rng = np.random.RandomState(seed)
        return Image.fromarray(rng.randint(0, 256, size=(h, w, 3), dtype=np.uint8))

    # torchvision is not needed for images: skip the class check of the (absent) video processor.
    def without_video(cls):
        class processor(cls):
            def check_argument_for_proper_class(self, name, arg):
                if name == "video_processor" and arg is None:
                    return None
                return super().check_argument_for_proper_class(name, arg)
        return processor

    out = []
    qwen = without_video(Qwen2_5_VLProcessor)(image_processor=Qwen2VLImageProcessorPil(min_pixels=56 * 56, max_pixels=28 * 28 * 64),
                               tokenizer=hf, chat_template=QWEN2_5_VL_TEMPLATE)
    qwen_cases = [("one_image", [{"role": "user", "content": [IMG, txt("Describe this image.")]}], [(56, 84)]),
                  ("two_images", [{"role": "user", "content": [txt("Compare"), IMG, txt("and"), IMG]}],
                   [(60, 60), (112, 56)])]
    for name, messages, sizes in qwen_cases:
        prompt = qwen.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
        images = [image(h, w, i) for i, (h, w) in enumerate(sizes)]
        enc = qwen(text=[prompt], images=images, return_tensors="np")
        grid = enc["image_grid_thw"].tolist()
        counts = [t * h * w // 4 for t, h, w in grid]
        ids = enc["input_ids"][0].tolist()
        assert ids.count(hf.convert_tokens_to_ids("<|image_pad|>")) == sum(counts)
        out.append({"format": "qwen2_5_vl", "name": name, "prompt": prompt, "image_grid_thw": grid,
                    "tokens_per_image": counts, "expanded_text": hf.decode(ids), "ids": ids})

    llava_ip = LlavaOnevisionImageProcessorPil(
        size={"height": 384, "width": 384}, image_mean=[0.5, 0.5, 0.5], image_std=[0.5, 0.5, 0.5],
        image_grid_pinpoints=[[a, b] for a in (384, 768, 1152, 1536, 1920, 2304) for b in (384, 768, 1152, 1536, 1920, 2304)])
    llava = without_video(LlavaOnevisionProcessor)(image_processor=llava_ip, tokenizer=hf, chat_template=LLAVA_ONEVISION_TEMPLATE,
                                    num_image_tokens=729, vision_feature_select_strategy="full")
    llava_cases = [("one_image", [{"role": "user", "content": [IMG, txt("What is shown in this image?")]}], [(300, 500)]),
                   ("two_images", [{"role": "user", "content": [IMG, IMG, txt("Which is brighter?")]}],
                    [(200, 200), (100, 400)])]
    for name, messages, sizes in llava_cases:
        prompt = llava.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
        images = [image(h, w, 10 + i) for i, (h, w) in enumerate(sizes)]
        enc = llava(text=[prompt], images=images, return_tensors="np")
        ids = enc["input_ids"][0].tolist()
        image_id = hf.convert_tokens_to_ids("<image>")
        # Per-image counts: the runs of <image> ids, in order.
        counts, run = [], 0
        for i in ids + [-1]:
            if i == image_id:
                run += 1
            elif run:
                counts.append(run)
                run = 0
        assert len(counts) == len(sizes), counts
        out.append({"format": "llava_onevision", "name": name, "prompt": prompt,
                    "image_sizes": enc["image_sizes"].tolist(), "tokens_per_image": counts,
                    "expanded_text": hf.decode(ids), "ids": ids})
    return out


def main():
    os.makedirs(OUT, exist_ok=True)
    tok = build_tokenizer()
    tok.save(os.path.join(OUT, "tokenizer.json"), pretty=True)
    with open(os.path.join(OUT, "tokenizer.json"), encoding="utf-8") as f:
        data = json.load(f)
    merges = data["model"]["merges"]
    assert merges and isinstance(merges[0], list), "expected the [a, b] merges format from this tokenizers"
    assert all(" " not in a and " " not in b for a, b in merges)
    legacy = json.loads(json.dumps(data))
    legacy["model"]["merges"] = [a + " " + b for a, b in merges]
    write_text("tokenizer_legacy_merges.json", json.dumps(legacy, ensure_ascii=False, indent=2) + "\n")

    # Both files must give HF the same ids (tokenizers reads both formats).
    tok_legacy = Tokenizer.from_file(os.path.join(OUT, "tokenizer_legacy_merges.json"))
    tok_ids = lambda s: tok.encode(s, add_special_tokens=False).ids  # noqa: E731
    for s in TEST_STRINGS:
        assert tok_legacy.encode(s, add_special_tokens=False).ids == tok_ids(s), s

    added = sorted(data["added_tokens"], key=lambda t: t["id"])
    config = {
        "add_bos_token": False,
        "add_prefix_space": False,
        "added_tokens_decoder": {str(t["id"]): {k: t[k] for k in ("content", "lstrip", "normalized", "rstrip",
                                                                  "single_word", "special")} for t in added},
        "additional_special_tokens": [t for t in SPECIAL_TOKENS if t not in ("<|endoftext|>", "<|im_end|>")],
        "bos_token": None,
        "chat_template": QWEN2_5_VL_TEMPLATE,
        "clean_up_tokenization_spaces": False,
        "eos_token": "<|im_end|>",
        "errors": "replace",
        "model_max_length": 32768,
        "pad_token": "<|endoftext|>",
        "split_special_tokens": False,
        "tokenizer_class": "Qwen2Tokenizer",
        "unk_token": None,
    }
    write_json("tokenizer_config.json", config)
    write_json("chat_templates.json", {"qwen2_5_vl": QWEN2_5_VL_TEMPLATE, "llava_onevision": LLAVA_ONEVISION_TEMPLATE})

    wp, uni = other_kind_tokenizers()
    wp.save(os.path.join(OUT, "tokenizer_wordpiece.json"), pretty=True)
    uni.save(os.path.join(OUT, "tokenizer_unigram.json"), pretty=True)

    # ---- reference ids and decodes ----
    b2u = bytes_to_unicode()
    encode_cases = [{"text": s, "ids": tok_ids(s)} for s in TEST_STRINGS]
    decode_cases = []
    for case in encode_cases:
        for skip in (False, True):
            decode_cases.append({"ids": case["ids"], "skip_special": skip,
                                 "text": tok.decode(case["ids"], skip_special_tokens=skip)})
    for run in BYTE_RUNS:
        ids = [tok.token_to_id(b2u[b]) for b in run]
        assert all(i is not None for i in ids)
        decode_cases.append({"ids": ids, "skip_special": False, "text": tok.decode(ids, skip_special_tokens=False)})
    assert decode_cases[-1]["text"] != "" and "\ufffd" in decode_cases[0 + 2 * len(encode_cases)]["text"]
    reference = {
        "generator": "tools/make_tokenizer_fixture.py",
        "vocab_size_with_added": tok.get_vocab_size(with_added_tokens=True),
        "vocab_size_model": tok.get_vocab_size(with_added_tokens=False),
        "added_tokens": [{"id": t["id"], "content": t["content"], "special": t["special"]} for t in added],
        "byte_token_ids": [tok.token_to_id(b2u[b]) for b in range(256)],
        "encode": encode_cases,
        "decode": decode_cases,
    }
    write_json("reference_ids.json", reference)

    hf, chat_cases = chat_reference(OUT, tok_ids)
    write_json("chat_template_reference.json", {"generator": "tools/make_tokenizer_fixture.py",
                                                "render": chat_cases, "expand": expansion_reference(hf)})
    flags_reference(build_tokenizer())
    print(f"wrote {OUT}: vocab {tok.get_vocab_size(with_added_tokens=True)} (model {tok.get_vocab_size(False)}), "
          f"{len(merges)} merges, {len(encode_cases)} encode cases, {len(decode_cases)} decode cases, "
          f"{len(chat_cases)} chat cases")


if __name__ == "__main__":
    sys.exit(main())
