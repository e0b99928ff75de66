"""SD.Next ``modules/shared.py``: the options object (``opts.data``) and the job state."""


class _Options:
    def __init__(self):
        self.data = {"prompt_attention": "native"}

    def __getattr__(self, name):
        try:
            return self.__dict__["data"][name]
        except KeyError:
            raise AttributeError(name) from None


class _State:
    interrupted = False

    def interrupt(self):
        self.interrupted = True


opts = _Options()
state = _State()
