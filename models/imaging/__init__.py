"""The imaging network (``imaging``): lesion segmentation and abnormality classification
of CT patches and chest X-rays."""
