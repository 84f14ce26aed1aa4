"""The refusal of a lifting rule.

A rule that cannot express its node in the IR (an unsupported dtype, argument or overload)
raises :class:`Unsupported`; the lifting driver then runs that node in eager PyTorch and reports
the message as the fallback's reason. It has a module of its own because both the dtype table
and every rule raise it.
"""


class Unsupported(Exception):
    """This node cannot be lifted; the message says why (it is reported as the fallback reason)."""
