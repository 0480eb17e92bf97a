"""The tiny server models (AR and D2F with tokenizers), built once per session for every server test."""
from tests.support.server_fixtures import model_dirs
