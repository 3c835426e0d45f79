"""Assistant-only targets, and packed rows that give every example exactly its own log-probs.

References are independent of the code under test: targets written out by hand from the chat's parts, and
transformers' LlamaForCausalLM run on each example alone.
"""

import numpy as np
import pytest
import torch

from apps.finetune.decoder import LoraDecoder
from apps.finetune.packing import ChatEncoder, collate
from apps.finetune.training import sequence_logprobs, token_logprobs
from apps.finetune.training_settings import LoraSettings
from inference.tokenizer import ChatTokenizer
from tests.finetune.conftest import conversation, preference_pair


@pytest.fixture(scope="module")
def encoder(tiny_chat):
    return ChatEncoder(ChatTokenizer(tiny_chat["hf_dir"]))


@pytest.fixture(scope="module")
def decoder(tiny_chat):
    """The tiny model with a random, non-zero LoRA on every module (B = 0 would hide a wrong LoRA path)."""
    model = LoraDecoder(hf_dir=tiny_chat["hf_dir"], lora=LoraSettings(rank=4, alpha=8, dropout=0.0)).eval()
    with torch.no_grad():
        for b in model.lora_b.values():
            b.normal_(0, 0.2, generator=torch.Generator().manual_seed(3))
    return model


def hf_logprobs(model, ids: np.ndarray, sources: np.ndarray, targets: np.ndarray) -> torch.Tensor:
    logits = model(torch.from_numpy(ids)[None]).logits[0]
    return torch.log_softmax(logits, -1)[torch.from_numpy(sources), torch.from_numpy(targets)]


def test_only_assistant_content_and_end_of_turn_tokens_are_targets(encoder):
    tokenizer = encoder.tokenizer
    example = {
        "messages": [
            {"role": "system", "content": "Be brief."},
            {"role": "user", "content": "Where is the mill?"},
            {"role": "assistant", "content": "By the river."},
            {"role": "user", "content": "And the bridge?"},
            {"role": "assistant", "content": "Past the mill, over the river."},
        ]
    }
    segment = encoder.sft_segment(example, max_length=512, where="test")
    end_of_turn = tokenizer.fast.token_to_id("<|im_end|>")
    # By hand: each assistant turn's content, then its end-of-turn token; nothing of the system or user
    # turns, the "<|im_start|>assistant\n" headers, or the newline after each end-of-turn.
    expected = [
        *tokenizer.encode("By the river."),
        end_of_turn,
        *tokenizer.encode("Past the mill, over the river."),
        end_of_turn,
    ]
    assert segment.targets.tolist() == expected
    # Each target is predicted from the position just before it...
    np.testing.assert_array_equal(segment.ids[segment.sources + 1], segment.targets)
    # ...and each turn's first target comes right after its header.
    header = tokenizer.encode("<|im_start|>assistant\n")
    first_of_turns = [i for i in segment.sources + 1 if i not in segment.sources + 2]
    assert len(first_of_turns) == 2
    for start in first_of_turns:
        assert segment.ids[start - len(header) : start].tolist() == header
    # The newline after the last end-of-turn closes the text but is never a target.
    assert segment.sources.max() + 1 == len(segment.ids) - 2


def test_an_example_that_opens_with_the_assistant_is_refused(encoder):
    from apps.finetune.packing import ExampleError

    example = {"messages": [{"role": "assistant", "content": "Hi."}, {"role": "user", "content": "Hello."}]}
    with pytest.raises(ExampleError, match="opens with an assistant message"):
        encoder.sft_segment(example, max_length=512, where="example 7")


def test_packed_rows_give_each_example_its_own_log_probs(tiny_chat, encoder, decoder):
    examples = [(encoder.sft_segment(conversation(i), max_length=512, where=str(i)),) for i in range(6)]
    packed = collate(examples, pad_id=0)
    assert packed.input_ids.numel() == packed.tokens == sum(len(s) for (s,) in examples)  # no padding at all
    padded = collate(examples, pad_id=0, pad_to_longest=True)
    assert padded.input_ids.numel() == len(examples) * max(len(s) for (s,) in examples)
    with torch.no_grad():
        got, with_padding = token_logprobs(decoder, packed), token_logprobs(decoder, padded)
        for index, (segment,) in enumerate(examples):
            alone = token_logprobs(decoder, collate([(segment,)], pad_id=0))
            torch.testing.assert_close(got[packed.sequences == index], alone, atol=1e-5, rtol=0)
            torch.testing.assert_close(with_padding[padded.sequences == index], alone, atol=1e-5, rtol=0)


def test_the_decoder_computes_what_transformers_computes(tiny_chat, encoder):
    """With no LoRA update (B = 0, as training starts) the decoder's log-probs, packed, are the
    transformers model's on each example alone."""
    plain = LoraDecoder(hf_dir=tiny_chat["hf_dir"], lora=LoraSettings(rank=4, alpha=8)).eval()
    examples = [(encoder.sft_segment(conversation(i), max_length=512, where=str(i)),) for i in range(6)]
    packed = collate(examples, pad_id=0)
    with torch.no_grad():
        got = token_logprobs(plain, packed)
    for index, (segment,) in enumerate(examples):
        want = hf_logprobs(tiny_chat["model"], segment.ids, segment.sources, segment.targets)
        torch.testing.assert_close(got[packed.sequences == index], want, atol=1e-5, rtol=0)


def test_a_pair_shares_its_prompt_and_scores_like_two_sequences(tiny_chat, encoder, decoder):
    pairs = [preference_pair(i) for i in range(4)]
    tree = collate([encoder.dpo_segments(p, max_length=512, where="t") for p in pairs], pad_id=0)
    assert tree.attention_rows[0] == 2 * len(pairs)  # prompt + chosen, and prompt + rejected, per pair
    plain = [encoder.dpo_segments(p, max_length=512, where="t", share_prompt=False) for p in pairs]
    two = collate(plain, pad_id=0)
    assert tree.tokens < two.tokens  # the prompt is there once per pair, not twice
    with torch.no_grad():
        shared = sequence_logprobs(token_logprobs(decoder, tree), tree, 2)
        separate = sequence_logprobs(token_logprobs(decoder, two), two, 2)
    torch.testing.assert_close(shared, separate, atol=1e-5, rtol=0)
    # and against transformers, sequence by sequence (B = 0: the tiny base model)
    base = LoraDecoder(hf_dir=tiny_chat["hf_dir"], lora=LoraSettings(rank=4, alpha=8)).eval()
    with torch.no_grad():
        base_shared = sequence_logprobs(token_logprobs(base, tree), tree, 2)
    for index, sequences in enumerate(plain):
        for which, segment in enumerate(sequences):
            want = hf_logprobs(tiny_chat["model"], segment.ids, segment.sources, segment.targets).sum()
            torch.testing.assert_close(base_shared[index, which], want, atol=1e-4, rtol=0)


def test_a_long_pair_loses_the_start_of_its_prompt_first(encoder):
    pair = preference_pair(1)
    pair["prompt"] = [{"role": "user", "content": "far away " * 60 + "Describe it."}]
    (segment,) = encoder.dpo_segments(pair, max_length=64, where="t")
    chosen = (segment.branches == 1).sum()
    assert (segment.branches != 2).sum() <= 64 and chosen == len(
        encoder.completion_ids(
            pair["prompt"], pair["chosen"], encoder.render(pair["prompt"], add_generation_prompt=True), "t"
        )
    )
    header = encoder.tokenizer.encode("<|im_start|>assistant\n")
    shared = segment.ids[segment.branches == 0].tolist()
    assert shared[-len(header) :] == header  # the prompt still ends where the answer starts


def test_lora_gradients_are_peft_gradients(tiny_chat, encoder, decoder):
    """One packed batch's mean NLL: the decoder's LoRA gradients equal PEFT's on the same weights, each
    example run alone through transformers."""
    import copy

    from peft import LoraConfig, get_peft_model

    from apps.finetune.decoder import peft_key

    examples = [(encoder.sft_segment(conversation(i), max_length=512, where=str(i)),) for i in range(4)]
    batch = collate(examples, pad_id=0)
    decoder.zero_grad()
    (-token_logprobs(decoder, batch).mean()).backward()

    config = LoraConfig(r=4, lora_alpha=8, target_modules=list(decoder.lora.target_modules))
    peft = get_peft_model(copy.deepcopy(tiny_chat["model"]), config)
    weights = decoder.adapter_tensors()
    with torch.no_grad():
        for name, param in peft.named_parameters():
            if "lora_" in name:
                param.copy_(weights[name.replace(".default", "")])
    total = sum(len(segment.targets) for (segment,) in examples)
    loss = sum(-hf_logprobs(peft, s.ids, s.sources, s.targets).sum() for (s,) in examples) / total
    loss.backward()
    peft_grads = {n.replace(".default", ""): p.grad for n, p in peft.named_parameters() if "lora_" in n}
    rank = decoder.lora.rank
    for layer in range(decoder.config.num_layers):
        for group, modules in decoder.group_modules.items():
            for band, module in enumerate(modules):
                grad_a = decoder.lora_a[f"{layer}_{group}"].grad[band * rank : (band + 1) * rank]
                torch.testing.assert_close(grad_a, peft_grads[peft_key(layer, module, "lora_A")], atol=1e-6, rtol=1e-4)
                grad_b = decoder.lora_b[f"{layer}_{module}"].grad
                torch.testing.assert_close(grad_b, peft_grads[peft_key(layer, module, "lora_B")], atol=1e-6, rtol=1e-4)
