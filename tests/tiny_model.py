"""A tiny random-weights Llama with a BPE tokenizer trained on the spot (ChatML template): builds in seconds,
loads like any HF model directory. For unit tests of engine and search mechanics, not of judgments."""

from __future__ import annotations

from pathlib import Path

CHATML = (
    "{% for message in messages %}{{ '<|im_start|>' + message['role'] + '\n' + message['content'] }}"
    "{% if not loop.last or message['role'] != 'assistant' %}{{ '<|im_end|>\n' }}{% endif %}{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|im_start|>assistant\n' }}{% endif %}"
)
CORPUS = [
    "Write a short poem about the sea. Explain why the sky is blue. Give three tips for staying healthy.",
    "Rate the quality of the response from 1 to 6. Complexity score: 3. Quality score: 5. Answer with one digit.",
    '[{"tag": "writing", "explanation": "asks for text"}, {"tag": "science", "explanation": "physics"}]',
    "Rewrite the instruction below into a new, more demanding version. #Instruction#: #New Instruction#:",
    "0 1 2 3 4 5 6 7 8 9 the a of and to in is for with on as by at an be this that it from or",
]


def bpe_tokenizer():  # noqa: ANN201 - PreTrainedTokenizerFast
    """Byte-level BPE (GPT-2 / SmolLM2 style): "1" is one token."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    specials = ["<|endoftext|>", "<|im_start|>", "<|im_end|>"]
    tok = Tokenizer(models.BPE(unk_token=None))
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=512, special_tokens=specials,
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet())
    tok.train_from_iterator(CORPUS * 20, trainer=trainer)
    fast = PreTrainedTokenizerFast(tokenizer_object=tok, bos_token="<|endoftext|>", eos_token="<|im_end|>",
                                   pad_token="<|endoftext|>", unk_token="<|endoftext|>")
    fast.chat_template = CHATML
    return fast


def sentencepiece_tokenizer(workdir: Path):  # noqa: ANN201 - LlamaTokenizer
    """A real SentencePiece model (LLaMA style: BPE, split digits, byte fallback, a dummy prefix) trained here
    and loaded through transformers' LlamaTokenizer, as the DEITA scorers and InsTagger load theirs: "1" encodes
    to "▁" + "1", while "1" is its own vocabulary entry. No chat template of its own (set to ChatML here so the
    evolver and responder roles can use it too)."""
    import io
    import json

    import sentencepiece as spm
    from transformers import AutoTokenizer

    buf = io.BytesIO()
    spm.SentencePieceTrainer.train(sentence_iterator=iter(CORPUS * 20), model_writer=buf, vocab_size=420,
                                   model_type="bpe", split_digits=True, byte_fallback=True, unk_id=0, bos_id=1,
                                   eos_id=2, pad_id=-1, character_coverage=1.0, minloglevel=2)
    workdir.mkdir(parents=True, exist_ok=True)
    (workdir / "tokenizer.model").write_bytes(buf.getvalue())
    (workdir / "tokenizer_config.json").write_text(json.dumps(
        {"tokenizer_class": "LlamaTokenizer", "bos_token": "<s>", "eos_token": "</s>", "unk_token": "<unk>"}))
    tok = AutoTokenizer.from_pretrained(workdir)
    tok.chat_template = CHATML
    return tok


def build_tiny_model(target: Path, seed: int = 0, tokenizer: str = "bpe") -> Path:
    """A random-weights Llama (hidden 64, 2 layers) with a `bpe` or `sentencepiece` tokenizer, saved to
    `target`."""
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM

    fast = bpe_tokenizer() if tokenizer == "bpe" else sentencepiece_tokenizer(target)
    torch.manual_seed(seed)
    pad = fast.pad_token_id if fast.pad_token_id is not None else fast.eos_token_id
    config = LlamaConfig(vocab_size=len(fast), hidden_size=64, intermediate_size=128, num_hidden_layers=2,
                         num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=1024,
                         bos_token_id=fast.bos_token_id, eos_token_id=fast.eos_token_id,
                         pad_token_id=pad, tie_word_embeddings=True)
    model = LlamaForCausalLM(config)
    model.generation_config.eos_token_id = fast.eos_token_id
    target.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(target)
    fast.save_pretrained(target)
    return target
