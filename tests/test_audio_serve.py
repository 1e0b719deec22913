"""The OpenAI audio endpoints over real audio runs, called by the official openai client
against a real loopback server: POST /v1/audio/transcriptions (recognition) and
POST /v1/audio/speech (generation), with their refusals."""
import io
import os
import wave
from pathlib import Path

import httpx
import openai
import pytest

from genforge.config import make_config
from genforge.recipes import get_recipe
from genforge.train.trainer import fit
from serving import LiveServer

FSDD = Path(os.environ.get("GENFORGE_DATA", "")) / "fsdd" / "recordings"
pytestmark = pytest.mark.skipif(not FSDD.is_dir(), reason="GENFORGE_DATA with fsdd/ is needed")

RUNS = {
    "digits-asr": ("audio-classify", {"model": "cnn", "max_steps": 30, "batch_size": 32, "eval_batches": 1,
                                      "eval_every": 30, "model.channels": (8, 16), "model.dense": 16}),
    "digits-tts": ("audio-generate", {"model": "vae", "max_steps": 2, "batch_size": 8, "train_limit": 64,
                                      "eval_batches": 1, "n_mels": 16, "gl_iters": 4, "model.arch": "conv",
                                      "model.conv_channels": 4, "model.hidden": 16, "model.latent": 4}),
}


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    root = tmp_path_factory.mktemp("audio_serve")
    for name, (rname, ov) in RUNS.items():
        fit(rname, make_config(get_recipe(rname), {**ov, "data": "fsdd", "plots": False}), root / name,
            log=lambda s: None)
    with LiveServer([root / n for n in RUNS]) as s:
        yield s


@pytest.fixture
def client(server):
    return openai.OpenAI(base_url=server.url + "/v1", api_key="unused", max_retries=0, timeout=60)


def test_transcription_formats(client):
    clip = FSDD / "4_jackson_0.wav"
    with open(clip, "rb") as f:
        r = client.audio.transcriptions.create(model="digits-asr", file=f)
    assert r.text in get_recipe("audio-classify").load_audio_set("fsdd", "", 8000, 8000).classes
    with open(clip, "rb") as f:
        text = client.audio.transcriptions.create(model="digits-asr", file=f, response_format="text")
    assert text.strip() == r.text
    with open(clip, "rb") as f:
        v = client.audio.transcriptions.create(model="digits-asr", file=f, response_format="verbose_json")
    assert v.text == r.text and v.duration == 1.0


def test_transcription_refusals(client, server):
    with pytest.raises(openai.BadRequestError, match="neither a WAV nor a FLAC"):
        client.audio.transcriptions.create(model="digits-asr", file=("x.wav", b"not audio at all"))
    with pytest.raises(openai.BadRequestError, match="srt"):
        with open(FSDD / "4_jackson_0.wav", "rb") as f:
            client.audio.transcriptions.create(model="digits-asr", file=f, response_format="srt")
    with pytest.raises(openai.BadRequestError, match="/v1/audio/speech"):
        with open(FSDD / "4_jackson_0.wav", "rb") as f:
            client.audio.transcriptions.create(model="digits-tts", file=f)
    r = httpx.post(server.url + "/v1/audio/transcriptions", data={"model": "digits-asr"},
                   files={"file": ("one.wav", b"RIFF\x24\x00\x00\x00WAVEfmt ")})
    assert r.status_code == 400 and "corrupt WAV" in r.json()["error"]["message"]


def test_speech_returns_wav(client):
    for word in ("seven", "7"):
        r = client.audio.speech.create(model="digits-tts", voice="alloy", input=word, response_format="wav")
        with wave.open(io.BytesIO(r.content)) as w:
            assert w.getframerate() == 8000 and w.getnchannels() == 1 and w.getnframes() == 15 * 256


def test_speech_refusals(client):
    with pytest.raises(openai.BadRequestError, match="wav only"):
        client.audio.speech.create(model="digits-tts", voice="alloy", input="seven", response_format="mp3")
    with pytest.raises(openai.BadRequestError, match="names no label"):
        client.audio.speech.create(model="digits-tts", voice="alloy", input="hello there", response_format="wav")
    with pytest.raises(openai.BadRequestError, match="/v1/audio/transcriptions"):
        client.audio.speech.create(model="digits-asr", voice="alloy", input="seven", response_format="wav")
