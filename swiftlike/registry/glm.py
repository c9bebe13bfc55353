"""GLM-4-9B-chat (ModelScope: ZhipuAI). The -hf checkpoint loads natively in transformers."""
from .core import register_family

register_family("glm", "chatglm", "ChatGLMModel", "glm4", ["THUDM/glm-4-9b-chat"], "ZhipuAI", ("trust_remote_code",))
register_family("glm", "glm4", "Glm4ForCausalLM", "glm4", ["THUDM/glm-4-9b-chat-hf"], "ZhipuAI", ("transformers>=4.46",))
