"""Forms for knowledge pages: a collection's name, and a multi-file upload."""

from django import forms


class CollectionForm(forms.Form):
    name = forms.CharField(max_length=100, label="Name")


class MultipleFileInput(forms.ClearableFileInput):
    allow_multiple_selected = True


class MultipleFileField(forms.FileField):
    """Several files in one field (Django's documented pattern): cleans each, returns the list."""

    def clean(self, data, initial=None):
        files = data if isinstance(data, list | tuple) else [data]
        return [super(MultipleFileField, self).clean(file, initial) for file in files]


class UploadForm(forms.Form):
    files = MultipleFileField(
        widget=MultipleFileInput(attrs={"accept": ".pdf,.docx,.html,.htm,.md,.markdown,.txt"}),
        label="Documents",
        help_text="PDF, Word (.docx), HTML, Markdown or text; several at once. Each is read on its own: one that "
        "cannot be read fails alone.",
    )


class SearchForm(forms.Form):
    q = forms.CharField(max_length=500, label="Question", required=False)
