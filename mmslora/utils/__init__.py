from .adapter_io import adapter_state_dict, load_adapter, save_adapter
from .params import ParameterReport, count_parameters, print_trainable_parameters

__all__ = ['ParameterReport', 'count_parameters', 'print_trainable_parameters',
           'adapter_state_dict', 'save_adapter', 'load_adapter']
